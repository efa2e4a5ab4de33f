"""The main job's stage markers: a digest of each stage's inputs and its upstream markers decides
what reruns (fake stage functions; the real chain is tests/test_reproduce.py)."""

import json
import os

import pytest

from experiments import main_job

STAGES = ("a", "b", "c", "d")
UPSTREAM = {"a": (), "b": ("a",), "c": ("b",), "d": ("a",)}
OUTPUTS = {s: (f"out_{s}",) for s in STAGES}


def _run(workdir, inputs, force=(), fail=None):
  calls = []

  def fn(stage):
    def f():
      out = os.path.join(workdir, f"out_{stage}")
      # A stale output from an earlier run of the stage must have been cleared before it runs.
      assert not os.path.exists(os.path.join(out, "result")), stage
      calls.append(stage)
      if stage == fail:
        raise RuntimeError("crash")
      os.makedirs(out, exist_ok=True)
      open(os.path.join(out, "result"), "w").close()
      return {"value": inputs[stage]}
    return f

  try:
    main_job.run_stages(workdir, {s: fn(s) for s in STAGES}, inputs, force=force,
                        upstream=UPSTREAM, outputs=OUTPUTS)
  except RuntimeError:
    pass
  return calls


def test_changed_input_reruns_the_stage_and_its_downstream_only(tmp_path):
  w = str(tmp_path)
  inputs = {"a": {"n": 1}, "b": {"lr": 0.1}, "c": {}, "d": {"seed": 0}}
  assert _run(w, inputs) == list(STAGES)
  assert _run(w, inputs) == []
  assert _run(w, {**inputs, "b": {"lr": 0.2}}) == ["b", "c"]
  assert _run(w, {**inputs, "b": {"lr": 0.2}, "a": {"n": 2}}) == ["a", "b", "c", "d"]
  with open(os.path.join(w, "stages", "b.json")) as f:
    marker = json.load(f)
  assert marker["inputs"] == {"lr": 0.2} and marker["upstream"] == ["a"]
  assert marker["summary"] == {"value": {"lr": 0.2}}


def test_force_reruns_downstream_and_a_crash_leaves_downstream_stale(tmp_path):
  w = str(tmp_path)
  inputs = {"a": {}, "b": {}, "c": {}, "d": {}}
  _run(w, inputs)
  assert _run(w, inputs, force=("b",)) == ["b", "c"]
  # b reruns, then c crashes: c's marker is gone and the next run redoes c (b is up to date).
  assert _run(w, inputs, force=("b",), fail="c") == ["b", "c"]
  assert not os.path.exists(os.path.join(w, "stages", "c.json"))
  assert _run(w, inputs) == ["c"]
  # Same inputs, but a rerun of a (forced) gives a new digest: everything below it reruns.
  assert _run(w, inputs, force=("a",)) == list(STAGES)


def test_old_marker_without_digest_and_unreadable_marker_rerun(tmp_path):
  w = str(tmp_path)
  inputs = {"a": {}, "b": {}, "c": {}, "d": {}}
  _run(w, inputs)
  with open(os.path.join(w, "stages", "d.json"), "w") as f:
    json.dump({"seconds": 1.0, "size": "tiny", "summary": {}}, f)  # before digests existed
  with open(os.path.join(w, "stages", "c.json"), "w") as f:
    f.write("{truncated")
  assert _run(w, inputs) == ["c", "d"]


def test_upstream_must_come_first():
  with pytest.raises(ValueError, match="upstream"):
    main_job.run_stages("/nonexistent", {"b": lambda: 0, "a": lambda: 0}, {"a": {}, "b": {}},
                        upstream={"a": (), "b": ("a",)})


def test_main_job_digests_follow_size_seed_and_patients(tmp_path):
  w = str(tmp_path)

  def inputs(size="tiny", seed=0, n=None):
    job = main_job.main_job_cfg.get_config(size)
    job.seed = seed
    if n:
      job.num_patients = n
    return main_job.stage_inputs(job, w, main_job.stage_configs(job, w))

  base = inputs()
  assert set(base) == set(main_job.STAGES) == set(main_job.UPSTREAM)
  assert all(u in main_job.STAGES for ups in main_job.UPSTREAM.values() for u in ups)
  assert base["pretrain"]["data_dir"] == "WORKDIR/records"  # a moved workdir keeps its digests
  assert "progress" not in base["pretrain"]
  assert inputs() == base
  changed = lambda other: {s for s in base if base[s] != other[s]}
  assert changed(inputs(n=base["synthesize"]["num_patients"] + 1)) == {"synthesize"}
  assert changed(inputs(seed=1)) >= {"synthesize", "pretrain", "baselines", "paper_tables"}
  assert changed(inputs(size="demo")) >= {"synthesize", "pretrain", "finetune_cost", "generate"}


def test_a_job_without_scratch_runs_drops_them_from_the_graph():
  from experiments.configs import main_job as main_job_cfg
  demo, tiny = main_job_cfg.get_config("demo"), main_job_cfg.get_config("tiny")
  assert not demo.scratch and tiny.scratch
  assert main_job.job_stages(tiny) == main_job.STAGES
  stages = main_job.job_stages(demo)
  assert not set(main_job.SCRATCH_STAGES) & set(stages)
  upstream = main_job.job_upstream(stages)
  assert set(upstream) == set(stages)
  assert "scratch_cost" not in upstream["paper_tables"]
  assert "finetune_cost" in upstream["paper_tables"]
