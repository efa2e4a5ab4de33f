"""The README's main job, end to end at the tiny size: every stage, the tables, a resumable rerun."""

import json
import os

from experiments import main_job as reproduce


def test_tiny_main_job_end_to_end_and_resume(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  results = reproduce.run(workdir, size="tiny", progress=False)
  assert list(results) == list(reproduce.STAGES)

  tables = os.path.join(workdir, "tables")
  cost = open(os.path.join(tables, "cost_table.md")).read()
  chronic = open(os.path.join(tables, "chronic_table.md")).read()
  for model in ("lmm_finetuned", "transformer_scratch", "lmm_zero_shot", "lightgbm_cost",
                "cms_hcc_v28", "oracle"):
    assert f"| {model}" in cost, model
  for model in ("lmm_finetuned", "transformer_scratch", "lmm_zero_shot", "lightgbm_chronic",
                "logistic", "oracle"):
    assert f"| {model}" in chronic, model
  assert any(f.endswith(".png") for f in os.listdir(tables))
  insights = [f for f in os.listdir(os.path.join(workdir, "insights"))
              if "insights" in f and f.endswith(".md")]
  assert insights
  with open(os.path.join(workdir, "generate", "memorization_audit.json")) as f:
    assert "passed" in json.load(f)
  out = capsys.readouterr().out
  assert "Next-12-month cost" in out  # both tables are printed at the end

  # A rerun finds every stage finished and redoes none (the stage records and stage_times.json
  # are unchanged).
  def marker_times():
    return {s: os.path.getmtime(os.path.join(workdir, "stages", f"{s}.json"))
            for s in reproduce.STAGES}
  times_path = os.path.join(workdir, "stage_times.json")
  before, times_before = marker_times(), os.path.getmtime(times_path)
  reproduce.run(workdir, size="tiny", progress=False)
  assert marker_times() == before and os.path.getmtime(times_path) == times_before
  assert capsys.readouterr().out.count("finished earlier") == len(reproduce.STAGES)

  # A forced last stage reruns alone (no stage is downstream of it), over cleared outputs.
  open(os.path.join(tables, "stale.md"), "w").close()
  reproduce.run(workdir, size="tiny", progress=False, force=("paper_tables",))
  after = marker_times()
  assert [s for s in reproduce.STAGES if after[s] != before[s]] == ["paper_tables"]
  assert not os.path.exists(os.path.join(tables, "stale.md"))
  with open(times_path) as f:
    assert json.load(f)["ran"] == ["paper_tables"]
