"""Baselines and paper tables on the session's synthetic world (real synthesizer and builder)."""

import csv
import os

import numpy as np

from lmm_jax.baselines import runner
from lmm_jax.eval import predictions as P
from lmm_jax.report import tables


def test_baselines_then_tables_on_tiny_world(tiny_data_dir, tmp_path):
  runs = tmp_path / "runs"
  summary = runner.run_baselines(tiny_data_dir, str(runs / "baselines"), progress=False)
  assert runner.ORACLE in summary["headline"]  # the synthetic world carries ground truth
  assert "members without an oracle row" not in summary["notes"].get(runner.ORACLE, {})
  h = summary["headline"]
  for name in runner.COST_MODELS:
    assert np.isfinite(h[name]["nmae"]), name
  # The oracle's probabilities rank conditions better than the age/sex rates.
  assert h["oracle"]["macro_auroc"] > h["prevalence_age_sex"]["macro_auroc"]
  found = P.find_predictions(str(runs))
  oracle_rows = 1 + (runner.ORACLE_MEDIAN in h)  # the median row when the world writes it
  assert len(found["cost"]) == len(runner.COST_MODELS) + oracle_rows
  assert len(found["chronic"]) == len(runner.CHRONIC_MODELS) + 1

  out = tables.build_report(str(runs), str(tmp_path / "tables"), num_samples=20, plots=False,
                            progress=False)
  with open(tmp_path / "tables" / "cost_table.csv") as f:
    rows = {r["model"]: r for r in csv.DictReader(f)}
  assert rows["oracle"]["kind"] == "oracle"
  assert rows["oracle"]["best_baseline_raw"] in runner.COST_MODELS
  assert int(rows["mean"]["members"]) == summary["members"]["held_out"]
  assert os.path.abspath(tiny_data_dir) in out["cost"]
  assert "new onsets only" in out["chronic"]
