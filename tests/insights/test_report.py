"""End to end: a tiny chronic fine-tuning run on the synthetic fixture, then the insights report."""

import os
import re

import numpy as np

from experiments.configs import chronic
from lmm_jax import tasks
from lmm_jax.insights import report
from lmm_jax.train import trainer


def _finetune(data_dir: str, workdir: str) -> str:
  config = chronic.get_config("tiny")
  config.update_from_flattened_dict({"data_dir": data_dir, "init_from": "",
                                     "num_train_steps": 3, "eval_batches": 1,
                                     "stats_examples": 64})
  trainer.train_and_evaluate(config, workdir, tasks.make_task(config))
  return workdir


def test_insights_report_end_to_end(tiny_data_dir, tmp_path, capsys):
  ft = _finetune(tiny_data_dir, str(tmp_path / "chronic"))
  out = str(tmp_path / "insights")
  path = report.write_insights_report(out, ft, tiny_data_dir, num_members=2, max_members=12,
                                      ig_steps=8, progress=False)
  assert path == os.path.join(out, "insights.md") and os.path.exists(path)
  text = open(path, encoding="utf-8").read()
  for section in ("## 1.", "## 2.", "## 3.", "## 4.", "## 5.", "Member #1", "Member #2",
                  "precision", "recall", "expected to be false", "Spearman vs true HR",
                  "Risk factors of new onset of each chronic condition"):
    assert section in text, section
  for png in ("insights_embedding_map.png", "insights_lifts.png", "insights_ranked_links.png",
              "insights_effect_vs_truth.png", "insights_risk_factors_chronic.png",
              os.path.join("insights_members", "member_01.png")):
    assert os.path.getsize(os.path.join(out, png)) > 1000, png
  lifts = np.load(os.path.join(out, "insights_lifts.npz"))
  assert lifts["model_lift"].shape == (22, 22)
  assert np.isfinite(lifts["model_lift"]).sum() > 100
  ok = np.isfinite(lifts["model_lower"])
  assert ok.sum() > 100 and np.all(lifts["model_lower"][ok] <= lifts["model_upper"][ok])
  # Integrated gradients stayed complete on the real model.
  import json  # pylint: disable=g-import-not-at-top
  summary = json.load(open(os.path.join(out, "insights_summary.json")))
  assert summary["explanations"]["median_relative_completeness_gap"] < 0.05
  assert summary["synthetic"] is True
  # Member-level figures are banded and cells of fewer than 11 members suppressed (issue 15).
  assert re.findall(r"^Age (?:\d+-\d+|90\+|unknown), ", text, re.M)
  event_rows = re.findall(r"^\| \d+ \| ([^|]+) \|", text, re.M)
  assert event_rows and set(r.strip() for r in event_rows) <= {
      "0-30d", "30-90d", "90-180d", "180-365d", "365d+"}
  assert not re.search(r"\bage \d+\b(?!-)", text)
  counts = [c.strip() for c in re.findall(r"^\|(?:[^|]+\|){4} ?([^|]+?) ?\|", text, re.M)]
  assert all(c == "<11" or not c.isdigit() or int(c) == 0 or int(c) >= 11 for c in counts)
  # Members are anonymous ranks: nothing names a subject in the report or on the console.
  captured = capsys.readouterr()
  for where in (text, captured.out, captured.err):
    assert "subject" not in where.lower()
