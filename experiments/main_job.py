"""The main job: synthesize -> build records -> pretrain -> fine-tune -> baselines -> zero-shot and
synthetic cohort -> insights -> paper tables, on the embedded synthetic world.

Each stage runs the same library entry point as its binary, in `WORKDIR/<stage>/`, with the config
of its own experiment file at the size's preset (experiments/configs/main_job.py), and records
`WORKDIR/stages/<stage>.json` when it finishes, so a rerun skips finished stages (delete the file or
pass --force to redo one). 'demo' fits a 2-core laptop CPU; the larger sizes run the identical
chain on GPUs or TPUs.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

from absl import logging
import ml_collections

from data_prep.configs import build_dataset as build_config
from experiments.configs import chronic as chronic_cfg
from experiments.configs import common
from experiments.configs import cost as cost_cfg
from experiments.configs import generate as generate_cfg
from experiments.configs import main_job as main_job_cfg
from experiments.configs import pretrain as pretrain_cfg
from lmm_jax import tasks
from lmm_jax.baselines import runner as baselines_runner
from lmm_jax.data import build
from lmm_jax.insights import report as insights_report
from lmm_jax.report import tables as report_tables
from lmm_jax.sampling import run as sampling_run
from lmm_jax.synth import synthesize as synthesize_world
from lmm_jax.train import predict
from lmm_jax.train import trainer

SIZES = common.PRESETS
STAGES = ("synthesize", "build_dataset", "pretrain", "finetune_cost", "finetune_chronic",
          "scratch_cost", "scratch_chronic", "baselines", "generate", "insights", "paper_tables")


def stage_configs(job: ml_collections.ConfigDict, workdir: str
                  ) -> dict[str, ml_collections.ConfigDict]:
  """The config of every training and sampling stage of the main job at job.preset."""
  data_dir = os.path.join(workdir, "records")
  pretrain_dir = os.path.join(workdir, "pretrain")
  out = {"pretrain": pretrain_cfg.get_config(job.preset)}
  if job.pretrain_steps:
    out["pretrain"].num_train_steps = job.pretrain_steps
  for name, module, init_from, model_name in (
      ("finetune_cost", cost_cfg, pretrain_dir, "lmm_finetuned"),
      ("finetune_chronic", chronic_cfg, pretrain_dir, "lmm_finetuned"),
      ("scratch_cost", cost_cfg, "", "transformer_scratch"),
      ("scratch_chronic", chronic_cfg, "", "transformer_scratch")):
    c = module.get_config(job.preset)
    c.init_from, c.model_name = init_from, model_name
    if job.finetune_steps:
      c.num_train_steps = job.finetune_steps
    out[name] = c
  g = generate_cfg.get_config(job.preset)
  g.init_from = pretrain_dir
  if job.zero_shot_patients >= 0:
    g.sampling.max_patients = job.zero_shot_patients
  if job.zero_shot_samples:
    g.sampling.num_samples = job.zero_shot_samples
    g.sampling.curve_ns = tuple(n for n in g.sampling.curve_ns if n <= job.zero_shot_samples)
  out["generate"] = g
  for c in out.values():
    c.data_dir = data_dir
    c.seed, c.progress = job.seed, job.progress
  return out


def run(workdir: str, *, size: str = "demo", seed: int = 0, num_patients: int | None = None,
        force: tuple[str, ...] = (), progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the whole chain; returns {stage: result summary}."""
  if size not in SIZES:
    raise ValueError(f"size={size!r}: expected one of {list(SIZES)}")
  unknown = [s for s in force if s not in STAGES]
  if unknown:
    raise ValueError(f"--force names unknown stages {unknown}; stages: {list(STAGES)}")
  job = main_job_cfg.get_config(size)
  job.seed, job.progress = seed, progress
  if num_patients:
    job.num_patients = num_patients
  workdir = os.path.abspath(workdir)
  meds_dir = os.path.join(workdir, "meds")
  data_dir = os.path.join(workdir, "records")
  tables_dir = os.path.join(workdir, "tables")
  configs = stage_configs(job, workdir)
  n = job.num_patients

  def synthesize() -> dict[str, Any]:
    return synthesize_world(meds_dir, num_patients=n, seed=seed, progress=progress)

  def build_dataset() -> dict[str, Any]:
    config = build_config.get_config()
    config.progress = progress
    report = build.build_dataset(meds_dir, data_dir, config)
    return {k: report[k] for k in ("input_rows", "used_rows", "dropped", "vocab_size")
            if k in report}

  def train(stage: str) -> Callable[[], dict[str, Any]]:
    def fn() -> dict[str, Any]:
      config = configs[stage]
      if stage == "pretrain":
        return trainer.train_and_evaluate(config, os.path.join(workdir, stage),
                                          tasks.make_task(config))
      return predict.train_and_predict(config, os.path.join(workdir, stage))
    return fn

  def baselines() -> dict[str, Any]:
    return baselines_runner.run_baselines(data_dir, os.path.join(workdir, "baselines"),
                                          seed=seed, progress=progress)

  def generate() -> dict[str, Any]:
    out = sampling_run.generate_and_evaluate(configs["generate"], os.path.join(workdir, "generate"))
    if not out["passed"]:
      raise RuntimeError("the memorization audit of the synthetic cohort failed: see "
                         f"{os.path.join(workdir, 'generate', 'memorization_audit.md')}")
    return {"curve": (out.get("zero_shot") or {}).get("curve"), "audit_passed": out["passed"]}

  def insights() -> dict[str, Any]:
    path = insights_report.write_insights_report(
        os.path.join(workdir, "insights"), os.path.join(workdir, "finetune_cost"), data_dir,
        chronic_workdir=os.path.join(workdir, "finetune_chronic"), progress=progress)
    return {"report": path}

  def paper_tables() -> dict[str, Any]:
    out = report_tables.build_report(workdir, tables_dir, seed=seed, progress=progress)
    return {"files": out["files"]}

  stage_fns = {"synthesize": synthesize, "build_dataset": build_dataset,
               "baselines": baselines, "generate": generate, "insights": insights,
               "paper_tables": paper_tables}
  stage_fns.update({s: train(s) for s in STAGES if s.startswith(("pretrain", "finetune_",
                                                                  "scratch_"))})
  os.makedirs(os.path.join(workdir, "stages"), exist_ok=True)
  results: dict[str, Any] = {}
  t_start = time.time()
  for i, stage in enumerate(STAGES, 1):
    marker = os.path.join(workdir, "stages", f"{stage}.json")
    if os.path.exists(marker) and stage not in force:
      with open(marker) as f:
        results[stage] = json.load(f)
      print(f"[{i}/{len(STAGES)}] {stage}: finished earlier ({results[stage]['seconds']:.0f} s), "
            "skipped", flush=True)
      continue
    print(f"[{i}/{len(STAGES)}] {stage} ...", flush=True)
    t0 = time.time()
    summary = stage_fns[stage]()
    seconds = time.time() - t0
    results[stage] = {"seconds": seconds, "size": size, "summary": _jsonable(summary)}
    with open(marker, "w") as f:
      json.dump(results[stage], f, indent=2)
    print(f"[{i}/{len(STAGES)}] {stage}: done in {seconds:.0f} s", flush=True)
    logging.info("stage %s done in %.1f s", stage, seconds)
  timing = {s: round(r["seconds"], 1) for s, r in results.items()}
  with open(os.path.join(workdir, "stage_times.json"), "w") as f:
    json.dump({"size": size, "num_patients": n, "stage_seconds": timing,
               "this_run_seconds": round(time.time() - t_start, 1)}, f, indent=2)
  for name in ("cost_table.md", "chronic_table.md"):
    with open(os.path.join(tables_dir, name)) as f:
      print("\n" + f.read())
  print(f"Tables and plots: {tables_dir}\nInsights: {os.path.join(workdir, 'insights')}")
  return results


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (str, int, bool)) or x is None:
    return x
  try:
    return float(x)
  except (TypeError, ValueError):
    return str(x)
