"""The main job: synthesize -> build records -> pretrain -> fine-tune -> baselines -> zero-shot and
synthetic cohort -> insights -> paper tables, on the embedded synthetic world.

Each stage runs the same library entry point as its binary, in `WORKDIR/<stage>/`, with the config
of its own experiment file at the size's preset (experiments/configs/main_job.py), and records
`WORKDIR/stages/<stage>.json` when it finishes. The marker holds a digest of the stage's inputs: its
own parameters or config (`stage_inputs`) and the digests of its upstream markers (`UPSTREAM`, the
stage graph). A rerun skips a stage whose marker's input digest matches; a changed input (size,
seed, patient count, a config) reruns that stage and, since its marker's digest changes, everything
downstream. A stage that reruns first loses its marker and its outputs (`STAGE_OUTPUTS`, e.g. a
trainer's whole run directory with its checkpoints, so it never resumes an old run under a new
config). --force=STAGE reruns that stage and its downstream the same way. 'demo' fits a 2-core
laptop CPU; the larger sizes run the identical chain on GPUs or TPUs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from typing import Any, Callable, Mapping, Sequence

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
PREDICTION_STAGES = ("finetune_cost", "finetune_chronic", "scratch_cost", "scratch_chronic",
                     "baselines", "generate")
# The stage graph: what each stage reads (directly; the rest follows transitively).
UPSTREAM: dict[str, tuple[str, ...]] = {
    "synthesize": (),
    "build_dataset": ("synthesize",),
    "pretrain": ("build_dataset",),
    "finetune_cost": ("pretrain", "build_dataset"),
    "finetune_chronic": ("pretrain", "build_dataset"),
    "scratch_cost": ("build_dataset",),
    "scratch_chronic": ("build_dataset",),
    "baselines": ("build_dataset",),
    "generate": ("pretrain",),
    "insights": ("pretrain", "finetune_cost", "finetune_chronic"),
    "paper_tables": PREDICTION_STAGES,
}
SCRATCH_STAGES = ("scratch_cost", "scratch_chronic")


def job_stages(job: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The stages of a job, in order: every stage, less the from-scratch runs if job.scratch is off."""
  return tuple(s for s in STAGES if job.scratch or s not in SCRATCH_STAGES)


def job_upstream(stages: Sequence[str]) -> dict[str, tuple[str, ...]]:
  """UPSTREAM restricted to the stages a job runs."""
  return {s: tuple(u for u in UPSTREAM[s] if u in stages) for s in stages}


# What a rerun of a stage deletes first, relative to WORKDIR.
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "synthesize": ("meds",), "build_dataset": ("records",), "paper_tables": ("tables",),
    **{s: (s,) for s in STAGES if s not in ("synthesize", "build_dataset", "paper_tables")},
}
# Config fields that do not change a stage's results (left out of its digest).
_NOT_INPUTS = ("progress",)


# The insights stage's member samples: every counterfactual costs one model call per member and
# edit (relationships: 24 edits of max_members; risk factors: 24 events x 2 heads of
# risk_members), sized so the stage stays near its former ~5,600 calls (256 members x 22 edits)
# and ~3 minutes of the idle 2-core CPU at the demo size (docs/insights.md, "Cost").
INSIGHTS_SIZES = {"max_members": 160, "risk_members": 48, "num_bootstrap": 200}


def stage_configs(job: ml_collections.ConfigDict, workdir: str
                  ) -> dict[str, ml_collections.ConfigDict]:
  """The config of every training and sampling stage of the main job at job.preset."""
  data_dir = os.path.join(workdir, "records")
  pretrain_dir = os.path.join(workdir, "pretrain")
  out = {"pretrain": pretrain_cfg.get_config(job.preset)}
  if job.pretrain_steps:
    out["pretrain"].num_train_steps = job.pretrain_steps
  out["pretrain"].train_examples = job.pretrain_examples
  for name, module, init_from, model_name in (
      ("finetune_cost", cost_cfg, pretrain_dir, "lmm_finetuned"),
      ("finetune_chronic", chronic_cfg, pretrain_dir, "lmm_finetuned"),
      ("scratch_cost", cost_cfg, "", "transformer_scratch"),
      ("scratch_chronic", chronic_cfg, "", "transformer_scratch")):
    c = module.get_config(job.preset)
    c.init_from, c.model_name = init_from, model_name
    if job.finetune_steps:
      c.num_train_steps = job.finetune_steps
    c.train_examples = job.finetune_examples
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


def stage_inputs(job: ml_collections.ConfigDict, workdir: str,
                 configs: Mapping[str, ml_collections.ConfigDict]) -> dict[str, Any]:
  """{stage: its own inputs as JSON}; paths under workdir are written relative to it, so a moved
  workdir keeps its digests."""
  build = build_config.get_config().to_dict()
  inputs = {"synthesize": {"num_patients": job.num_patients, "seed": job.seed,
                           "split_fractions": list(job.split_fractions)},
            "build_dataset": build, "baselines": {"seed": job.seed},
            "insights": dict(INSIGHTS_SIZES),
            "paper_tables": {"seed": job.seed}}
  inputs.update({s: c.to_dict() for s, c in configs.items()})
  return {s: _relative(_jsonable(_drop(v, _NOT_INPUTS)), workdir) for s, v in inputs.items()}


def _drop(d: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
  return {k: v for k, v in d.items() if k not in keys}


def _relative(x: Any, workdir: str) -> Any:
  if isinstance(x, dict):
    return {k: _relative(v, workdir) for k, v in x.items()}
  if isinstance(x, list):
    return [_relative(v, workdir) for v in x]
  if isinstance(x, str) and (x == workdir or x.startswith(workdir + os.sep)):
    return "WORKDIR" + x[len(workdir):]
  return x


def digest(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def run_stages(workdir: str, stage_fns: Mapping[str, Callable[[], Any]],
               inputs: Mapping[str, Any], *, force: Sequence[str] = (),
               upstream: Mapping[str, Sequence[str]] = UPSTREAM,
               outputs: Mapping[str, Sequence[str]] = STAGE_OUTPUTS,
               extra: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
  """Runs the stages of stage_fns in order, skipping those whose marker is up to date.

  A marker `WORKDIR/stages/STAGE.json` records `inputs_digest` (of the stage's inputs and its
  upstream markers' `digest`s) and its own `digest` (new at every run, so a rerun upstream, forced
  or not, makes every downstream marker stale, even across a crash). Returns ({stage: marker},
  the stages that ran).
  """
  order = list(stage_fns)
  for s in order:
    missing = [u for u in upstream.get(s, ()) if u not in stage_fns]
    if missing or order.index(s) < max((order.index(u) for u in upstream.get(s, ())), default=-1):
      raise ValueError(f"stage {s!r}: upstream {list(upstream[s])} must run before it")
  stage_dir = os.path.join(workdir, "stages")
  os.makedirs(stage_dir, exist_ok=True)
  results: dict[str, Any] = {}
  ran: list[str] = []
  for i, stage in enumerate(order, 1):
    marker = os.path.join(stage_dir, f"{stage}.json")
    want = digest({"inputs": inputs[stage],
                   "upstream": {u: results[u]["digest"] for u in upstream.get(stage, ())}})
    old = _read_marker(marker)
    if old is not None and old.get("inputs_digest") == want and stage not in force:
      results[stage] = old
      print(f"[{i}/{len(order)}] {stage}: finished earlier ({old['seconds']:.0f} s), skipped",
            flush=True)
      continue
    why = ("forced" if stage in force else "new" if old is None else
           "inputs changed" if "inputs_digest" in old else "marker without inputs")
    if os.path.exists(marker):
      os.remove(marker)  # first: a crash below must not leave a marker over deleted outputs
    for rel in outputs.get(stage, ()):
      if os.path.lexists(os.path.join(workdir, rel)):  # a failure to delete stops the job
        shutil.rmtree(os.path.join(workdir, rel))
    print(f"[{i}/{len(order)}] {stage} ({why}) ...", flush=True)
    t0, cpu0 = time.time(), _cpu_seconds()
    summary = stage_fns[stage]()
    seconds = time.time() - t0
    # CPU seconds (this process's threads and its reaped worker processes) tell a stage's cost on
    # a shared machine, where wall seconds also count the other jobs' load.
    results[stage] = {"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu0, **(extra or {}),
                      "summary": _jsonable(summary),
                      "inputs_digest": want, "digest": digest([want, uuid.uuid4().hex]),
                      "upstream": list(upstream.get(stage, ())), "inputs": inputs[stage]}
    tmp = marker + ".tmp"
    with open(tmp, "w") as f:
      json.dump(results[stage], f, indent=2)
    os.replace(tmp, marker)
    ran.append(stage)
    print(f"[{i}/{len(order)}] {stage}: done in {seconds:.0f} s "
          f"({results[stage]['cpu_seconds']:.0f} CPU s)", flush=True)
    logging.info("stage %s done in %.1f s", stage, seconds)
  return results, ran


def _cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system + t.children_user + t.children_system


def _read_marker(path: str) -> dict[str, Any] | None:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    return {}  # unreadable: treated as stale


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
    return synthesize_world(meds_dir, num_patients=n, seed=seed, progress=progress,
                            split_fractions=tuple(job.split_fractions))

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
        chronic_workdir=os.path.join(workdir, "finetune_chronic"), progress=progress,
        pretrain_workdir=os.path.join(workdir, "pretrain"), **INSIGHTS_SIZES)
    return {"report": path}

  def paper_tables() -> dict[str, Any]:
    out = report_tables.build_report(workdir, tables_dir, seed=seed, progress=progress)
    return {"files": out["files"]}

  fns = {"synthesize": synthesize, "build_dataset": build_dataset,
         "baselines": baselines, "generate": generate, "insights": insights,
         "paper_tables": paper_tables}
  fns.update({s: train(s) for s in STAGES if s.startswith(("pretrain", "finetune_", "scratch_"))})
  stages = job_stages(job)
  stage_fns = {s: fns[s] for s in stages}
  # A stage left out of this job (the from-scratch runs at demo) must not leave an earlier run's
  # predictions below WORKDIR, where the paper tables would read them as this job's.
  for stage in set(STAGES) - set(stages):
    for path in [os.path.join(workdir, rel) for rel in STAGE_OUTPUTS[stage]] + [
        os.path.join(workdir, "stages", f"{stage}.json")]:
      if os.path.lexists(path):
        print(f"{stage}: not part of this job (size {size}), removing {path}", flush=True)
        if os.path.isdir(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
  t_start = time.time()
  inputs = stage_inputs(job, workdir, configs)
  results, ran = run_stages(workdir, stage_fns, {s: inputs[s] for s in stages}, force=force,
                            upstream=job_upstream(stages), extra={"size": size})
  if ran:  # stage_times.json describes the stages as they now are; untouched if none ran
    times_path = os.path.join(workdir, "stage_times.json")
    with open(times_path + ".tmp", "w") as f:
      json.dump({"size": size, "num_patients": n, "seed": seed,
                 "stage_seconds": {s: round(r["seconds"], 1) for s, r in results.items()},
                 "stage_cpu_seconds": {s: round(r["cpu_seconds"], 1)
                                       for s, r in results.items() if "cpu_seconds" in r},
                 "ran": ran, "this_run_seconds": round(time.time() - t_start, 1)}, f, indent=2)
    os.replace(times_path + ".tmp", times_path)
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
