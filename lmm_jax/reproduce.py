"""The main job: synthesize -> build records -> pretrain -> fine-tune -> baselines -> zero-shot and
synthetic cohort -> insights -> paper tables, on the embedded synthetic world.

Each stage runs the same library entry point as its binary, in `WORKDIR/<stage>/`, and records
`WORKDIR/stages/<stage>.json` when it finishes, so a rerun skips finished stages (delete the file or
pass --force to redo one). Sizes come from one of SIZES: 'demo' fits a 2-core laptop CPU in about
twenty minutes; the larger ones run the identical chain on GPUs or TPUs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

from absl import logging
import ml_collections


@dataclasses.dataclass(frozen=True)
class Size:
  """How big the main job is: the synthetic world, the model preset and the sampling effort."""
  num_patients: int
  model_preset: str          # experiments/configs/pretrain.py preset (cost/chronic derive from it)
  generate_preset: str       # experiments/configs/generate.py preset
  pretrain_steps: int | None = None   # None: the preset's own
  finetune_steps: int | None = None
  zero_shot_patients: int | None = None  # None: the generate preset's own; 0: every member
  # Futures per member (None: the preset's own). The demo size samples 20 futures for every
  # held-out member, so the zero-shot rows cover the same members as the other rows of the tables;
  # the accuracy-vs-N curve then stops at 20 (the generate preset alone goes to 50 on 40 members).
  zero_shot_samples: int | None = None


SIZES = {
    "tiny": Size(num_patients=400, model_preset="tiny", generate_preset="tiny",
                 pretrain_steps=20, finetune_steps=10),
    "demo": Size(num_patients=8_000, model_preset="demo", generate_preset="demo",
                 zero_shot_patients=0, zero_shot_samples=20),
    "small": Size(num_patients=200_000, model_preset="small", generate_preset="full"),
    "base": Size(num_patients=1_000_000, model_preset="base", generate_preset="full"),
    "large": Size(num_patients=5_000_000, model_preset="large", generate_preset="full"),
}

STAGES = ("synthesize", "build_dataset", "pretrain", "finetune_cost", "finetune_chronic",
          "scratch_cost", "scratch_chronic", "baselines", "generate", "insights", "paper_tables")


def _configs(size: Size, workdir: str) -> dict[str, ml_collections.ConfigDict]:
  from experiments.configs import chronic as chronic_cfg  # pylint: disable=g-import-not-at-top
  from experiments.configs import cost as cost_cfg  # pylint: disable=g-import-not-at-top
  from experiments.configs import generate as generate_cfg  # pylint: disable=g-import-not-at-top
  from experiments.configs import pretrain as pretrain_cfg  # pylint: disable=g-import-not-at-top
  data_dir = os.path.join(workdir, "records")
  pretrain_dir = os.path.join(workdir, "pretrain")
  out = {}
  out["pretrain"] = pretrain_cfg.get_config(size.model_preset)
  for name, module, init_from, model_name in (
      ("finetune_cost", cost_cfg, pretrain_dir, "lmm_finetuned"),
      ("finetune_chronic", chronic_cfg, pretrain_dir, "lmm_finetuned"),
      ("scratch_cost", cost_cfg, "", "transformer_scratch"),
      ("scratch_chronic", chronic_cfg, "", "transformer_scratch")):
    c = module.get_config(size.model_preset)
    c.init_from, c.model_name = init_from, model_name
    if size.finetune_steps:
      c.num_train_steps = size.finetune_steps
    out[name] = c
  if size.pretrain_steps:
    out["pretrain"].num_train_steps = size.pretrain_steps
  g = generate_cfg.get_config(size.generate_preset)
  g.init_from = pretrain_dir
  if size.zero_shot_patients is not None:
    g.sampling.max_patients = size.zero_shot_patients
  if size.zero_shot_samples is not None:
    g.sampling.num_samples = size.zero_shot_samples
    g.sampling.curve_ns = tuple(n for n in g.sampling.curve_ns if n <= size.zero_shot_samples)
  out["generate"] = g
  for c in out.values():
    c.data_dir = data_dir
  return out


def run(workdir: str, *, size: str = "demo", seed: int = 0, num_patients: int | None = None,
        force: tuple[str, ...] = (), progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the whole chain; returns {stage: result summary}."""
  if size not in SIZES:
    raise ValueError(f"size={size!r}: expected one of {sorted(SIZES)}")
  unknown = [s for s in force if s not in STAGES]
  if unknown:
    raise ValueError(f"--force names unknown stages {unknown}; stages: {list(STAGES)}")
  spec = SIZES[size]
  workdir = os.path.abspath(workdir)
  meds_dir = os.path.join(workdir, "meds")
  data_dir = os.path.join(workdir, "records")
  tables_dir = os.path.join(workdir, "tables")
  configs = _configs(spec, workdir)
  for c in configs.values():
    c.seed, c.progress = seed, progress
  n = num_patients or spec.num_patients

  def synthesize() -> dict[str, Any]:
    from lmm_jax.synth import synthesize as synth  # pylint: disable=g-import-not-at-top
    return synth(meds_dir, num_patients=n, seed=seed, progress=progress)

  def build_dataset() -> dict[str, Any]:
    from lmm_jax.data import build  # pylint: disable=g-import-not-at-top
    config = build.default_config()
    config.progress = progress
    report = build.build_dataset(meds_dir, data_dir, config)
    return {k: report[k] for k in ("input_rows", "used_rows", "dropped", "vocab_size")
            if k in report}

  def train(stage: str) -> Callable[[], dict[str, Any]]:
    def fn() -> dict[str, Any]:
      config = configs[stage]
      if stage == "pretrain":
        from lmm_jax.train import trainer  # pylint: disable=g-import-not-at-top
        return trainer.train_and_evaluate(config, os.path.join(workdir, stage))
      from lmm_jax.tasks import finetune  # pylint: disable=g-import-not-at-top
      return finetune.run(config, os.path.join(workdir, stage))
    return fn

  def baselines() -> dict[str, Any]:
    from lmm_jax.baselines import runner  # pylint: disable=g-import-not-at-top
    return runner.run_baselines(data_dir, os.path.join(workdir, "baselines"), seed=seed,
                                progress=progress)

  def generate() -> dict[str, Any]:
    from lmm_jax.sampling import run as sampling_run  # pylint: disable=g-import-not-at-top
    out = sampling_run.generate_and_evaluate(configs["generate"], os.path.join(workdir, "generate"))
    if not out["passed"]:
      raise RuntimeError("the memorization audit of the synthetic cohort failed: see "
                         f"{os.path.join(workdir, 'generate', 'memorization_audit.md')}")
    return {"curve": (out.get("zero_shot") or {}).get("curve"), "audit_passed": out["passed"]}

  def insights() -> dict[str, Any]:
    from lmm_jax.insights import report  # pylint: disable=g-import-not-at-top
    path = report.write_insights_report(
        os.path.join(workdir, "insights"), os.path.join(workdir, "finetune_cost"), data_dir,
        chronic_workdir=os.path.join(workdir, "finetune_chronic"), progress=progress)
    return {"report": path}

  def paper_tables() -> dict[str, Any]:
    from lmm_jax.report import tables  # pylint: disable=g-import-not-at-top
    out = tables.build_report(workdir, tables_dir, seed=seed, progress=progress)
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
