r"""The scaling curve binary and library: model size x training patients (configs/scaling.py).

  python -m experiments.scaling --config=experiments/configs/scaling.py:demo \
      --workdir=runs/scaling --config.data_dir=runs/default/records

Each point runs in WORKDIR/points/SIZE-nN/ (pretrain/, cost/, chronic/) with the library entry
points of the main job, and leaves point.json when done: a restart skips finished points. Writes
WORKDIR/scaling.md, scaling.csv and scaling.png. With --config.references_dir=RUN/baselines (a
baselines run on the same dataset) its models' held-out NMAE and macro AUROC, on the same members,
are the table's reference rows and the plot's dashed lines: the gap each point leaves.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments import cli
from experiments.configs import chronic as chronic_cfg
from experiments.configs import cost as cost_cfg
from experiments.configs import pretrain as pretrain_cfg
from experiments.configs import scaling as scaling_cfg
from lmm_jax import conventions
from lmm_jax import tasks
from lmm_jax.data import records
from lmm_jax.eval import metrics as metrics_lib
from lmm_jax.eval import predictions as pred_lib
from lmm_jax.report import plots
from lmm_jax.train import predict
from lmm_jax.train import trainer

POINT_FILE = "point.json"
COLUMNS = ("size", "params", "train_patients", "train_members", "pretrain_steps",
           "finetune_steps", "tuning_loss", "nmae", "nmae_p50", "macro_auroc", "seconds")


def _steps(examples: float, per_step: float, sc: ml_collections.ConfigDict, passes: float) -> int:
  return int(min(sc.max_steps, max(sc.min_steps, math.ceil(passes * examples / per_step))))


def point_configs(sc: ml_collections.ConfigDict, size: str, n: int, report: dict[str, Any],
                  workdir: str) -> dict[str, ml_collections.ConfigDict]:
  """The pretrain / cost / chronic configs of one point (size, N train patients)."""
  if size not in scaling_cfg.MODEL_SIZES:
    raise ValueError(f"model size {size!r}: expected one of {list(scaling_cfg.MODEL_SIZES)}")
  base = "tiny" if sc.preset == "tiny" else "demo"
  patients = int(report["patients"][conventions.TRAIN])
  n = min(int(n), patients)
  tokens = report["tokens"][conventions.TRAIN] * n / patients
  members = max(1, round(report["task_examples"][conventions.TRAIN] * n / patients))
  shape = dict(scaling_cfg.MODEL_SIZES[size])
  out = {}
  p = pretrain_cfg.get_config(base)
  p.update_from_flattened_dict({**shape, "seq_len": sc.seq_len, "batch_size": sc.batch_size,
                                "train_examples": n})
  p.num_train_steps = _steps(tokens, sc.batch_size * sc.seq_len, sc, sc.passes)
  p.eval_every_steps = 0
  p.early_stopping.patience = 0   # fixed passes per point: no tuning evaluations to stop on
  p.checkpoint_every_steps = p.num_train_steps
  p.optimizer.warmup_steps = min(p.optimizer.warmup_steps, max(1, p.num_train_steps // 10))
  out["pretrain"] = p
  for name, module in (("cost", cost_cfg), ("chronic", chronic_cfg)):
    c = module.get_config(base)
    c.update_from_flattened_dict({**shape, "seq_len": sc.seq_len, "batch_size": 2 * sc.batch_size,
                                  "train_examples": members, "head.hidden_dim": shape[
                                      "model.d_model"]})
    c.init_from = os.path.join(workdir, "pretrain")
    c.num_train_steps = _steps(members, 2 * sc.batch_size, sc, sc.finetune_passes)
    c.eval_every_steps = 0
    c.early_stopping.patience = 0
    c.checkpoint_every_steps = c.num_train_steps
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, max(1, c.num_train_steps // 10))
    out[name] = c
  for c in out.values():
    c.data_dir, c.seed, c.progress = sc.data_dir, sc.seed, sc.progress
  return out


def run_point(sc: ml_collections.ConfigDict, size: str, n: int, report: dict[str, Any],
              workdir: str) -> dict[str, Any]:
  """Trains and evaluates one point (or reads its point.json); returns its row."""
  done = os.path.join(workdir, POINT_FILE)
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  cfgs = point_configs(sc, size, n, report, workdir)
  t0 = time.time()
  pre = trainer.train_and_evaluate(cfgs["pretrain"], os.path.join(workdir, "pretrain"),
                                   tasks.make_task(cfgs["pretrain"]))
  for name in ("cost", "chronic"):
    predict.train_and_predict(cfgs[name], os.path.join(workdir, name))
  cost = pred_lib.read_cost_predictions(_point_predictions(workdir, "cost", cfgs["cost"]))
  chronic = pred_lib.read_chronic_predictions(
      _point_predictions(workdir, "chronic", cfgs["chronic"]))
  # NMAE is minimized by the median: the head's P50 output is scored too (as the main tables do).
  p50 = cost.quantiles.get("p50")
  row = {"size": size, "params": int(cost.meta.get("num_params") or 0),
         "train_patients": int(cfgs["pretrain"].train_examples),
         "train_members": int(cfgs["cost"].train_examples),
         "pretrain_steps": int(cfgs["pretrain"].num_train_steps),
         "finetune_steps": int(cfgs["cost"].num_train_steps),
         "tuning_loss": float(pre["eval_loss"]),
         "nmae": float(metrics_lib.cost_metrics(cost.y_true, cost.y_pred)["nmae"]),
         "nmae_p50": (float(metrics_lib.cost_metrics(cost.y_true, p50)["nmae"])
                      if p50 is not None else math.nan),
         "macro_auroc": float(metrics_lib.chronic_metrics(
             chronic.y_true, chronic.y_pred, names=chronic.conditions)["macro_auroc"]),
         "seconds": round(time.time() - t0, 1)}
  with open(done, "w") as f:
    json.dump(row, f, indent=2)
  return row


def _point_predictions(workdir: str, task: str, cfg: ml_collections.ConfigDict) -> str:
  return pred_lib.predictions_path(os.path.join(workdir, task), task, cfg.model_name)


def reference_rows(sc: ml_collections.ConfigDict, held_out_ids: np.ndarray
                   ) -> list[dict[str, Any]]:
  """The held-out NMAE / macro AUROC of sc.reference_models, read from sc.references_dir.

  held_out_ids are the subject ids the points predicted; a reference on other members is refused
  (its figures would not be comparable).
  """
  out = []
  for task in pred_lib.TASKS:
    for model in sc.reference_models[task]:
      path = pred_lib.predictions_path(sc.references_dir, task, model)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no reference predictions of model {model!r} "
                                f"(config.references_dir, config.reference_models.{task})")
      read = pred_lib.read_cost_predictions if task == "cost" else pred_lib.read_chronic_predictions
      p = read(path)
      if not np.array_equal(np.sort(p.subject_id), np.sort(held_out_ids)):
        raise ValueError(f"{path}: predicts {len(p.subject_id):,} members, not the "
                         f"{len(held_out_ids):,} held-out members of the scaling points")
      if task == "cost":
        row = {"model": model, "task": task,
               "nmae": float(metrics_lib.cost_metrics(p.y_true, p.y_pred)["nmae"])}
      else:
        row = {"model": model, "task": task, "macro_auroc": float(metrics_lib.chronic_metrics(
            p.y_true, p.y_pred, names=p.conditions)["macro_auroc"])}
      out.append(row)
  return out


def write_outputs(rows: list[dict[str, Any]], workdir: str, title: str,
                  references: list[dict[str, Any]] = ()) -> dict[str, str]:
  """scaling.csv, scaling.md and scaling.png of the rows (and the reference models' lines)."""
  csv_path = os.path.join(workdir, "scaling.csv")
  with open(csv_path, "w") as f:
    f.write(",".join(COLUMNS) + "\n")
    for r in rows:
      f.write(",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k])
                       for k in COLUMNS) + "\n")
  md_path = os.path.join(workdir, "scaling.md")
  with open(md_path, "w") as f:
    f.write(f"# {title}\n\n| size | parameters | train patients | train members | pretrain steps "
            "| fine-tune steps | tuning loss | held-out NMAE | held-out NMAE (P50) "
            "| held-out macro AUROC | seconds |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
      f.write(f"| {r['size']} | {r['params']:,} | {r['train_patients']:,} | "
              f"{r['train_members']:,} | {r['pretrain_steps']} | {r['finetune_steps']} | "
              f"{r['tuning_loss']:.3f} | {r['nmae']:.3f} | {r['nmae_p50']:.3f} | "
              f"{r['macro_auroc']:.3f} | {r['seconds']:.0f} |\n")
    if references:
      f.write("\nReferences on the same held-out members (the dashed lines of the plot):\n\n"
              "| model | held-out NMAE | held-out macro AUROC |\n|---|---:|---:|\n")
      for r in references:
        f.write(f"| {r['model']} | {r['nmae']:.3f} | |\n" if "nmae" in r else
                f"| {r['model']} | | {r['macro_auroc']:.3f} |\n")
  fig, axes = plots.subplots(1, 3, figsize=(12, 3.6))
  for size in dict.fromkeys(r["size"] for r in rows):
    pts = sorted((r for r in rows if r["size"] == size), key=lambda r: r["train_patients"])
    xs = [r["train_patients"] for r in pts]
    for ax, key in zip(axes, ("tuning_loss", "nmae", "macro_auroc")):
      line, = ax.plot(xs, [r[key] for r in pts], "o-",
                      label=f"{size} ({pts[0]['params']:,} params)")
      if key == "nmae":  # the P50 output, dotted in the same colour
        ax.plot(xs, [r["nmae_p50"] for r in pts], "s:", color=line.get_color(),
                label=f"{size}, P50 output")
  for r in references:
    ax, key = (axes[1], "nmae") if "nmae" in r else (axes[2], "macro_auroc")
    ax.axhline(r[key], ls="--", lw=1, color="gray")
    ax.annotate(r["model"], (0.02, r[key]), xycoords=("axes fraction", "data"), fontsize=7,
                color="gray", va="bottom")
  for ax, label in zip(axes, ("pretraining tuning loss", "held-out cost NMAE",
                              "held-out chronic macro AUROC")):
    ax.set(xscale="log", xlabel="training patients", ylabel=label, title=label)
  axes[0].legend()
  axes[1].legend(fontsize=7)
  fig.suptitle(title)
  png_path = plots.save_png(fig, os.path.join(workdir, "scaling.png"))
  return {"csv": csv_path, "md": md_path, "png": png_path}


def run_scaling(sc: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Every point of the grid (sizes x train_patients), then the table and the plot."""
  if not sc.data_dir:
    raise ValueError("--config.data_dir is required (the dataset builder's output)")
  records.check_dataset(sc.data_dir)
  with open(os.path.join(sc.data_dir, records.REPORT_FILE)) as f:
    report = json.load(f)
  rows = []
  for size in sc.sizes:
    for n in sc.train_patients:
      point_dir = os.path.join(os.path.abspath(workdir), "points", f"{size}-n{n}")
      os.makedirs(point_dir, exist_ok=True)
      logging.info("scaling point %s, %d train patients", size, n)
      print(f"scaling point {size} x {n} train patients ...", flush=True)
      rows.append(run_point(sc, size, n, report, point_dir))
      print(f"  {rows[-1]}", flush=True)
  title = (f"Scaling: {report['patients'][conventions.TRAIN]:,}-train-patient world, "
           f"{report['task_examples'][conventions.HELD_OUT]:,} held-out members, "
           f"measured {time.strftime('%Y-%m-%d')}")
  references = []
  if sc.references_dir:
    size, n = sc.sizes[0], sc.train_patients[0]
    first = os.path.join(os.path.abspath(workdir), "points", f"{size}-n{n}")
    cost_cfg_first = point_configs(sc, size, n, report, first)["cost"]
    references = reference_rows(sc, pred_lib.read_cost_predictions(
        _point_predictions(first, "cost", cost_cfg_first)).subject_id)
  files = write_outputs(rows, workdir, title, references)
  return {"rows": rows, "references": references, "files": files}


_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/scaling.py:demo", "Scaling config (file:preset).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the scaling runs.", required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  out = run_scaling(_CONFIG.value, _WORKDIR.value)
  with open(out["files"]["md"]) as f:
    print(f.read())
  print(f"Plot: {out['files']['png']}")


if __name__ == "__main__":
  cli.run(main)
