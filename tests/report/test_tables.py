"""The paper tables, from hand-made predictions files."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest

from lmm_jax import conditions
from lmm_jax.eval import metrics
from lmm_jax.eval import predictions as P
from lmm_jax.report import tables

C = conditions.NUM_CONDITIONS
N = 200


def _meta(kind="baseline", num_params=None):
  return {"kind": kind, "data_dir": "/data/x", "split": "held_out", "num_params": num_params,
          "description": "t"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  rng = np.random.default_rng(0)
  root = tmp_path_factory.mktemp("runs")
  ids = rng.permutation(10_000)[:N]
  y = rng.gamma(0.6, 5000.0, N)
  y[:3] = 400_000.0  # above the cap
  b = str(root / "baselines")
  P.write_cost_predictions(b, "mean", ids, y, np.full(N, y.mean()), meta=_meta())
  P.write_cost_predictions(b, "good", ids, y, 0.7 * y + 1000, meta=_meta())
  P.write_cost_predictions(b, "oracle", ids, y, y, meta=_meta("oracle"))
  order = np.argsort(-ids)  # another member order: still paired after sorting by subject
  P.write_cost_predictions(str(root / "lmm_run"), "lmm", ids[order], y[order],
                           0.9 * y[order] + 500, meta=_meta("finetuned", 12_345_678),
                           quantiles={"p10": 0.5 * y[order], "p90": np.where(
                               np.arange(N) < N // 2, 2 * y[order], 0.6 * y[order])})
  yt = rng.integers(0, 2, (N, C))
  prior = rng.integers(0, 2, (N, C))
  P.write_chronic_predictions(b, "prevalence", ids, yt, np.full((N, C), 0.5), prior,
                              meta=_meta())
  P.write_chronic_predictions(b, "logistic", ids, yt, 0.3 * yt + 0.7 * rng.random((N, C)), prior,
                              meta=_meta())
  P.write_chronic_predictions(b, "oracle", ids, yt, yt * 0.98 + 0.01, prior,
                              meta=_meta("oracle"))
  P.write_chronic_predictions(str(root / "lmm_run"), "lmm", ids, yt,
                              0.5 * yt + 0.5 * rng.random((N, C)), prior,
                              meta=_meta("finetuned", 12_345_678))
  return str(root), ids, y


def _rows(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_build_report_cost(runs, tmp_path):
  root, _, y = runs
  out = tables.build_report(root, str(tmp_path), num_samples=50, progress=False)
  for name in ("cost_table.md", "cost_table.csv", "predictive_ratios.csv", "predictive_ratio.png",
               "chronic_table.md", "chronic_table.csv", "calibration.png", "chronic_auroc.png"):
    assert os.path.getsize(tmp_path / name) > 0, name
  with open(tmp_path / "predictive_ratio.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  rows = {r["model"]: r for r in _rows(tmp_path / "cost_table.csv")}
  assert set(rows) == {"mean", "good", "oracle", "lmm"}
  # Values are the metrics of the files; the oracle is never the best baseline.
  good = metrics.cost_metrics(y, 0.7 * y + 1000)
  assert float(rows["good"]["nmae_raw"]) == pytest.approx(good["nmae"])
  assert float(rows["good"]["r2_raw"]) == pytest.approx(good["r2"])
  assert rows["lmm"]["best_baseline_raw"] == "good"
  assert float(rows["good"]["nmae_improvement_pct_raw"]) == pytest.approx(0.0)
  lmm = metrics.cost_metrics(y, 0.9 * y + 500)
  assert float(rows["lmm"]["nmae_improvement_pct_raw"]) == pytest.approx(
      100 * (good["nmae"] - lmm["nmae"]) / good["nmae"])
  # Paired interval present although the lmm file lists members in another order.
  assert rows["lmm"]["nmae_improvement_pct_raw_lo"] != ""
  lo, hi = float(rows["lmm"]["nmae_raw_lo"]), float(rows["lmm"]["nmae_raw_hi"])
  assert lo < lmm["nmae"] < hi
  # Capped target: actuals truncated at $250k.
  capped = metrics.cost_metrics(metrics.cap(y), metrics.cap(0.7 * y + 1000))
  assert float(rows["good"]["nmae_capped"]) == pytest.approx(capped["nmae"])
  assert rows["lmm"]["num_params"] == "12345678"
  # Half the members lie inside [P10, P90] (the other half's P90 is below their cost).
  assert float(rows["lmm"]["p10_p90_coverage"]) == pytest.approx(0.5)
  assert rows["good"]["p10_p90_coverage"] == ""
  md = out["cost"]
  assert "oracle †" in md and "12.3M" in md and "/data/x" in md and "200" in md
  ratios = _rows(tmp_path / "predictive_ratios.csv")
  assert len(ratios) == 4 * 10


def test_build_report_chronic(runs, tmp_path):
  root = runs[0]
  out = tables.build_report(root, str(tmp_path), num_samples=30, plots=False, progress=False)
  rows = _rows(tmp_path / "chronic_table.csv")
  macro = {(r["model"], r["population"]): r for r in rows if r["condition"] == "macro"}
  assert macro[("prevalence", "all")]["auroc"] == "0.5"
  assert macro[("lmm", "all")]["best_baseline"] == "logistic"
  assert float(macro[("logistic", "new_onset")]["auroc_improvement_pct"]) == pytest.approx(0.0)
  per = [r for r in rows if r["model"] == "lmm" and r["population"] == "new_onset"
         and r["condition"] not in ("macro", "micro")]
  assert len(per) == C
  assert all(int(r["n"]) < N for r in per)  # prevalent members left out
  assert "## new onsets only" in out["chronic"] and "oracle †" in out["chronic"]
  assert not os.path.exists(tmp_path / "calibration.png")


def test_duplicate_model_names_are_disambiguated(tmp_path):
  for run in ("a", "b"):
    P.write_cost_predictions(str(tmp_path / "runs" / run), "lmm", [1, 2, 3], [1.0, 2.0, 3.0],
                             [1.0, 2.0, 2.0], meta=_meta("finetuned"))
  tables.build_report(str(tmp_path / "runs"), str(tmp_path / "out"), num_samples=10,
                      plots=False, progress=False)
  names = sorted(r["model"] for r in _rows(tmp_path / "out" / "cost_table.csv"))
  assert names == ["lmm (a)", "lmm (b)"]


def test_empty_runs_dir_fails_clearly(tmp_path):
  with pytest.raises(FileNotFoundError, match="no predictions"):
    tables.build_report(str(tmp_path), str(tmp_path / "out"), progress=False)


def test_binary_prints_both_tables(runs, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.paper_tables", f"--runs_dir={runs[0]}",
       f"--output_dir={tmp_path}", "--bootstrap_samples=20", "--noplots", "--noprogress"],
      capture_output=True, text=True, check=True,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert "# Next-12-month cost" in result.stdout
  assert "# Chronic conditions" in result.stdout
  assert os.path.exists(tmp_path / "cost_table.md")


def test_paired_intervals_pin_an_exact_difference_and_gap(tmp_path):
  """|y - model| is exactly 1.5x the baseline's error on every member and the oracle has none:
  the paired gap closed is -50% and the improvement -50% on every resample, though each model's
  own NMAE interval is wide; the oracle lacks some members, so pairing uses the common ones."""
  rng = np.random.default_rng(3)
  n = 300
  ids = np.arange(n) * 7 + 1
  y = rng.gamma(0.8, 4000.0, n)
  e = rng.normal(0, 2000.0, n)
  runs = tmp_path / "runs"
  P.write_cost_predictions(str(runs / "b"), "base", ids, y, y + e, meta=_meta())
  P.write_cost_predictions(str(runs / "b"), "worse", ids, y, y + 1.5 * e, meta=_meta())
  P.write_cost_predictions(str(runs / "m"), "lmm", ids, y, y + 0.5 * e, meta=_meta("finetuned"))
  keep = slice(20, None)
  P.write_cost_predictions(str(runs / "o"), "oracle", ids[keep], y[keep], y[keep],
                           meta=_meta("oracle"))
  out = tables.build_report(str(runs), str(tmp_path / "out"), num_samples=200, plots=False,
                            progress=False)
  rows = {r["model"]: r for r in _rows(tmp_path / "out" / "cost_table.csv")}
  f = lambda r, k: float(rows[r][k])
  assert rows["lmm"]["best_baseline_raw"] == "base" and rows["lmm"]["oracle_raw"] == "oracle"
  for k in ("nmae_improvement_pct_raw", "nmae_improvement_pct_raw_lo",
            "nmae_improvement_pct_raw_hi"):
    assert f("worse", k) == pytest.approx(-50.0)
    assert f("lmm", k) == pytest.approx(50.0)
  for k in ("gap_closed_pct_raw", "gap_closed_pct_raw_lo", "gap_closed_pct_raw_hi"):
    assert f("lmm", k) == pytest.approx(50.0)
    assert f("worse", k) == pytest.approx(-50.0)
    assert f("base", k) == pytest.approx(0.0, abs=1e-9)
  assert f("lmm", "nmae_raw_hi") - f("lmm", "nmae_raw_lo") > 0.02  # unpaired: wide
  # Headroom: the base NMAE on the members the oracle holds (the oracle's NMAE is 0).
  base_common = metrics.cost_metrics(y[keep], y[keep] + e[keep])["nmae"]
  assert f("base", "headroom_nmae_raw") == pytest.approx(base_common)
  assert f("base", "headroom_nmae_raw_lo") < base_common < f("base", "headroom_nmae_raw_hi")
  assert f"paired on {n - 20} members" in out["cost"]
  assert "Headroom (NMAE, raw): the oracle row oracle is better than the best baseline base" in (
      out["cost"])


def test_paired_bootstrap_intervals_cover_a_known_difference():
  """Samples of a population whose NMAE improvement is known: the paired 95% interval covers it
  in about 95% of the samples."""
  rng = np.random.default_rng(0)
  pop_n = 200_000
  y = rng.gamma(0.7, 5000.0, pop_n)
  a = y * rng.lognormal(0, 0.5, pop_n)
  b = y * rng.lognormal(0, 0.6, pop_n)
  truth = metrics.improvement_percent(metrics.cost_metrics(y, b)["nmae"],
                                      metrics.cost_metrics(y, a)["nmae"], lower_is_better=True)
  covered, trials = 0, 80
  for t in range(trials):
    idx = rng.integers(0, pop_n, 400)
    sa = metrics.bootstrap_cost(y[idx], a[idx], num_samples=300, seed=t)["nmae"]
    sb = metrics.bootstrap_cost(y[idx], b[idx], num_samples=300, seed=t)["nmae"]
    lo, hi = metrics.interval(metrics.improvement_percent(sb, sa, lower_is_better=True))
    covered += lo <= truth <= hi
  assert covered / trials >= 0.85


def test_new_onset_macro_only_over_conditions_with_enough_onsets(tmp_path):
  rng = np.random.default_rng(5)
  n = 400
  ids = np.arange(n) + 100
  prior = np.zeros((n, C), np.uint8)
  yt = (rng.random((n, C)) < 0.2).astype(np.uint8)
  yt[:, 0] = 0
  yt[:29, 0] = 1          # condition 0: 29 new onsets, one short of the rule
  yt[:, 1] = 0
  yt[:30, 1] = 1          # condition 1: exactly 30, included
  score = np.clip(0.3 * yt + 0.7 * rng.random((n, C)), 0, 1)
  score[:, 0] = rng.random(n)   # a random score on the excluded condition
  runs = tmp_path / "runs"
  P.write_chronic_predictions(str(runs), "logistic", ids, yt, score, prior, meta=_meta())
  out = tables.build_report(str(runs), str(tmp_path / "out"), num_samples=50, plots=False,
                            progress=False)
  rows = _rows(tmp_path / "out" / "chronic_table.csv")
  get = lambda pop, cond: next(r for r in rows if r["population"] == pop and r["condition"] == cond)
  names = conditions.CONDITION_NAMES
  assert get("new_onset", names[0])["in_macro"] == "0"
  assert get("new_onset", names[1])["in_macro"] == "1"
  per = [float(get("new_onset", c)["auroc"]) for c in names[1:]]
  assert float(get("new_onset", "macro")["auroc"]) == pytest.approx(np.mean(per))
  # All members: every condition with both classes counts.
  per_all = [float(get("all", c)["auroc"]) for c in names]
  assert float(get("all", "macro")["auroc"]) == pytest.approx(np.mean(per_all))
  assert (f"1 condition(s) with fewer left out: {names[0]}." in out["chronic"])
  assert f"{names[0]} (not in macro)" in out["chronic"]
  # The bootstrap macro leaves it out too: its interval sits around the included mean.
  macro = get("new_onset", "macro")
  lo, hi = float(macro["auroc_lo"]), float(macro["auroc_hi"])
  assert lo < np.mean(per) < hi
  assert int(get("new_onset", "macro")["n_pos"]) == int(yt.sum())


def test_cost_table_adds_p50_row_beside_mean_models(tmp_path):
  # A model whose file carries a P50 beside its mean gets a second row scored on the P50; a file
  # whose y_pred already is the P50, and an oracle, do not.
  rng = np.random.default_rng(1)
  ids = np.arange(N)
  y = rng.gamma(0.6, 5000.0, N)
  p50 = 0.5 * y
  runs = tmp_path / "runs"
  P.write_cost_predictions(str(runs / "a"), "lmm", ids, y, 0.9 * y + 800,
                           meta=_meta("finetuned", 10), quantiles={"p50": p50})
  P.write_cost_predictions(str(runs / "b"), "lmm_p50_head", ids, y, p50,
                           meta=dict(_meta("finetuned", 10), point_estimate="p50"),
                           quantiles={"p50": p50})
  P.write_cost_predictions(str(runs / "c"), "oracle", ids, y, y, meta=_meta("oracle"),
                           quantiles={"p50": p50})
  P.write_cost_predictions(str(runs / "d"), "mean", ids, y, np.full(N, y.mean()), meta=_meta())
  tables.build_report(str(runs), str(tmp_path / "out"), num_samples=20, plots=False,
                      progress=False)
  rows = {r["model"]: r for r in _rows(tmp_path / "out" / "cost_table.csv")}
  assert set(rows) == {"lmm", "lmm (P50)", "lmm_p50_head", "oracle", "mean"}
  assert float(rows["lmm (P50)"]["nmae_raw"]) == pytest.approx(
      metrics.cost_metrics(y, p50)["nmae"])
  assert float(rows["lmm"]["nmae_raw"]) == pytest.approx(
      metrics.cost_metrics(y, 0.9 * y + 800)["nmae"])
  assert rows["lmm (P50)"]["kind"] == "finetuned"


def test_cost_table_pairs_every_row_with_the_commercial_risk_model(tmp_path):
  # The paper's comparison: each row's NMAE reduction against recalibrated CMS-HCC, paired on the
  # members both hold (the LMM here predicts only the first half of them).
  rng = np.random.default_rng(2)
  ids = np.arange(N)
  y = rng.gamma(0.6, 5000.0, N)
  hcc = 0.5 * y + 2000.0
  runs = tmp_path / "runs"
  P.write_cost_predictions(str(runs / "b"), tables.RISK_MODEL, ids, y, hcc, meta=_meta())
  half = N // 2
  P.write_cost_predictions(str(runs / "a"), "lmm", ids[:half], y[:half], 0.8 * y[:half],
                           meta=_meta("zero-shot", 10))
  tables.build_report(str(runs), str(tmp_path / "out"), num_samples=50, plots=False,
                      progress=False)
  rows = {r["model"]: r for r in _rows(tmp_path / "out" / "cost_table.csv")}
  err = lambda p: np.abs(y[:half] - p).sum()
  expected = 100 * (1 - err(0.8 * y[:half]) / err(hcc[:half]))
  got = rows["lmm"]
  assert float(got["nmae_below_risk_model_pct_raw"]) == pytest.approx(expected)
  assert float(got["nmae_below_risk_model_pct_raw_lo"]) < expected < float(
      got["nmae_below_risk_model_pct_raw_hi"])
  assert got["risk_model"] == tables.RISK_MODEL
  assert float(rows[tables.RISK_MODEL]["nmae_below_risk_model_pct_raw"]) == 0.0
  md = open(tmp_path / "out" / "cost_table.md").read()
  assert f"NMAE below {tables.RISK_MODEL} % (raw)" in md
