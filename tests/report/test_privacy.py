"""Small-cell suppression (the CMS rule of 11) and bands, in the helper and the paper tables."""

import csv

import numpy as np

from lmm_jax.eval import predictions as P
from lmm_jax.report import privacy
from lmm_jax.report import tables


def test_count_cells_and_bands():
  assert [privacy.count_cell(n) for n in (0, 1, 10, 11, 250)] == ["0", "<11", "<11", "11", "250"]
  assert [privacy.dollar_band(x) for x in (0.0, 12.5, 1000.0, 4999.0, 60_000.0, 3e6)] == [
      "$0", "<$1k", "$1k-$5k", "$1k-$5k", "$50k-$100k", ">=$250k"]
  assert privacy.dollar_band(float("inf")) == "n/a"
  assert [privacy.days_band(d) for d in (0, 29.9, 30, 200, 400)] == [
      "0-30d", "0-30d", "30-90d", "180-365d", "365d+"]
  assert [privacy.age_band(a) for a in (-1.0, 0.5, 64.9, 93.0)] == ["unknown", "0-4", "60-64",
                                                                    "90+"]
  g = privacy.suppress_groups({"n": np.array([5, 11, 0]), "ratio": np.array([1.0, 2.0, 3.0])},
                              "n", ("ratio",))
  assert np.isnan(g["ratio"][0]) and g["ratio"][1] == 2.0 and np.isnan(g["ratio"][2])
  assert g["n"].tolist() == [5, 11, 0]


def test_small_deciles_and_counts_are_suppressed_in_the_tables(tmp_path):
  rng = np.random.default_rng(0)
  n = 60                         # deciles of 6 members: every one suppressed
  ids = np.arange(n)
  y = rng.gamma(0.6, 5000.0, n)
  P.write_cost_predictions(str(tmp_path / "runs" / "b"), "mean", ids, y, 0.5 * y + 10,
                           meta={"kind": "baseline", "data_dir": "/d", "split": "held_out",
                                 "num_params": None, "description": "t"})
  out = tables.build_report(str(tmp_path / "runs"), str(tmp_path / "out"), num_samples=10,
                            plots=False, progress=False)
  assert out is not None
  with open(tmp_path / "out" / "predictive_ratios.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 10
  assert all(r["members"] == "<11" and r["predictive_ratio"] == "" and r["mean_true"] == ""
             for r in rows)
  row = tables.evaluate_cost(P.read_cost_predictions(
      P.predictions_path(str(tmp_path / "runs" / "b"), "cost", "mean")), "mean", 10, 0)
  assert np.isnan(row.ratios["ratio"]).all() and row.ratios["n"].tolist() == [6] * 10
  # 220 members: deciles of 22 are shown.
  m = 220
  y = rng.gamma(0.6, 5000.0, m)
  P.write_cost_predictions(str(tmp_path / "big"), "mean", np.arange(m), y, 0.5 * y + 10,
                           meta={"kind": "baseline", "data_dir": "/d", "split": "held_out",
                                 "num_params": None, "description": "t"})
  big = tables.evaluate_cost(P.read_cost_predictions(
      P.predictions_path(str(tmp_path / "big"), "cost", "mean")), "mean", 10, 0)
  assert np.isfinite(big.ratios["ratio"]).all()
