"""Metrics against values worked out by hand, and the bootstrap against explicit resamples."""

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from lmm_jax.eval import metrics

# y = [0, 100, 200, 700], yhat = [100, 100, 100, 500]: mean 250, |err| = [100, 0, 100, 200],
# |y - mean| = [250, 150, 50, 450], err^2 sum 60,000, (y - mean)^2 sum 290,000.
Y = np.array([0.0, 100.0, 200.0, 700.0])
YHAT = np.array([100.0, 100.0, 100.0, 500.0])


def test_cost_metrics_by_hand():
  m = metrics.cost_metrics(Y, YHAT)
  assert m["n"] == 4
  assert m["mean_true"] == pytest.approx(250.0)
  assert m["mae"] == pytest.approx(100.0)
  assert m["nmae"] == pytest.approx(0.4)
  assert m["r2"] == pytest.approx(1 - 60_000 / 290_000)
  assert m["cpm"] == pytest.approx(1 - 400 / 900)


def test_cost_metrics_perfect_and_mean():
  assert metrics.cost_metrics(Y, Y)["r2"] == pytest.approx(1.0)
  m = metrics.cost_metrics(Y, np.full(4, Y.mean()))
  assert m["r2"] == pytest.approx(0.0)
  assert m["cpm"] == pytest.approx(0.0)


def test_cost_metrics_reject_bad_input():
  with pytest.raises(ValueError, match="non-finite"):
    metrics.cost_metrics([1.0, np.nan], [1.0, 2.0])
  with pytest.raises(ValueError, match="shape"):
    metrics.cost_metrics([1.0, 2.0], [1.0])


def test_cap():
  np.testing.assert_array_equal(metrics.cap([1.0, 300_000.0]), [1.0, 250_000.0])


def test_predictive_ratios_by_hand():
  # Sorted by prediction (stable): groups {0, 1} and {2, 3}.
  r = metrics.predictive_ratios(Y, YHAT, num_groups=2)
  np.testing.assert_array_equal(r["n"], [2, 2])
  np.testing.assert_allclose(r["ratio"], [200 / 100, 600 / 900])
  np.testing.assert_allclose(r["mean_true"], [50, 450])


def test_predictive_ratios_deciles_cover_everyone():
  rng = np.random.default_rng(0)
  y = rng.gamma(1.0, 1000.0, 103)
  r = metrics.predictive_ratios(y, y, 10)
  assert r["n"].sum() == 103
  np.testing.assert_allclose(r["ratio"], 1.0)


# Condition A: y = [0, 0, 1, 1], p = [0.1, 0.4, 0.35, 0.8]. Positive-negative pairs ranked right:
# 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4 (3 of 4). Average precision: 0.5 * 1 + 0.5 * 2/3.
YA = np.array([0, 0, 1, 1])
PA = np.array([0.1, 0.4, 0.35, 0.8])
YB = np.array([1, 0, 1, 0])
PB = np.array([0.9, 0.2, 0.6, 0.3])


def test_binary_metrics_by_hand():
  assert metrics.auroc(YA, PA) == pytest.approx(0.75)
  assert metrics.auprc(YA, PA) == pytest.approx(0.5 + 0.5 * 2 / 3)
  assert metrics.brier(YA, PA) == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
  # 10 bins: one member per bin, gaps 0.1, 0.4, 0.65, 0.2.
  assert metrics.expected_calibration_error(YA, PA, 10) == pytest.approx(1.35 / 4)
  # 2 bins: [0, .5) holds 3 members (1 positive, mean p 0.85/3); [.5, 1] holds p=.8, y=1.
  assert metrics.expected_calibration_error(YA, PA, 2) == pytest.approx(
      0.75 * abs(1 / 3 - 0.85 / 3) + 0.25 * 0.2)


def test_binary_metrics_edge_cases():
  assert metrics.auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
  assert np.isnan(metrics.auroc([1, 1], [0.2, 0.3]))
  assert np.isnan(metrics.auprc([0, 0], [0.2, 0.3]))
  with pytest.raises(ValueError, match="0/1"):
    metrics.auroc([0, 2], [0.1, 0.2])
  with pytest.raises(ValueError, match="probabilities"):
    metrics.brier([0, 1], [0.1, 1.2])


def test_calibration_curve_skips_empty_bins():
  c = metrics.calibration_curve(YA, PA, 2)
  np.testing.assert_array_equal(c["count"], [3, 1])
  np.testing.assert_allclose(c["frac_pos"], [1 / 3, 1.0])


def test_chronic_metrics_macro_micro_and_new_onsets():
  y = np.stack([YA, YB], 1)
  p = np.stack([PA, PB], 1)
  m = metrics.chronic_metrics(y, p, names=["a", "b"])
  assert [r["auroc"] for r in m["per_condition"]] == pytest.approx([0.75, 1.0])
  assert m["macro_auroc"] == pytest.approx(0.875)
  # Pooled: positives 0.35, 0.8, 0.9, 0.6 vs negatives 0.1, 0.4, 0.2, 0.3 -> 15 of 16 pairs.
  assert m["micro_auroc"] == pytest.approx(15 / 16)
  assert m["n_pairs"] == 8
  prior = np.array([[0, 0], [0, 0], [1, 0], [0, 0]])
  onset = metrics.chronic_metrics(y, p, metrics.new_onset_mask(prior), names=["a", "b"])
  a = onset["per_condition"][0]
  assert (a["n"], a["n_pos"], a["auroc"]) == (3, 1, pytest.approx(1.0))
  assert onset["n_pairs"] == 7


def test_chronic_macro_skips_single_class_conditions():
  y = np.stack([YA, np.zeros(4, int)], 1)
  p = np.stack([PA, PB], 1)
  m = metrics.chronic_metrics(y, p)
  assert m["n_conditions"] == 1
  assert m["macro_auroc"] == pytest.approx(0.75)


def _resample_indices(n, num_samples, seed):
  counts = np.concatenate(list(metrics.bootstrap_counts(n, num_samples, seed)))
  return [np.repeat(np.arange(n), c) for c in counts]


def test_bootstrap_counts_deterministic_and_complete():
  a = np.concatenate(list(metrics.bootstrap_counts(50, 30, seed=3)))
  b = np.concatenate(list(metrics.bootstrap_counts(50, 30, seed=3)))
  assert a.shape == (30, 50)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a.sum(1), 50)
  assert not np.array_equal(a, np.concatenate(list(metrics.bootstrap_counts(50, 30, seed=4))))


def test_bootstrap_cost_matches_explicit_resamples():
  rng = np.random.default_rng(1)
  y = rng.gamma(0.5, 2000.0, 40)
  yhat = y * rng.uniform(0.5, 1.5, 40) + 100
  boot = metrics.bootstrap_cost(y, yhat, num_samples=20, seed=5)
  for b, idx in enumerate(_resample_indices(40, 20, 5)):
    m = metrics.cost_metrics(y[idx], yhat[idx])
    for k in ("nmae", "mae", "r2", "cpm"):
      assert boot[k][b] == pytest.approx(m[k], rel=1e-9)


def test_bootstrap_macro_auroc_matches_sklearn_on_resamples():
  rng = np.random.default_rng(2)
  y = (rng.random((60, 3)) < 0.4).astype(int)
  p = np.round(rng.random((60, 3)), 1)  # ties on purpose
  mask = rng.random((60, 3)) < 0.8
  boot = metrics.bootstrap_macro_auroc(y, p, mask, num_samples=15, seed=9)
  for b, idx in enumerate(_resample_indices(60, 15, 9)):
    per = []
    for c in range(3):
      keep = idx[mask[idx, c]]
      yc = y[keep, c]
      if 0 < yc.sum() < yc.size:
        per.append(sk_metrics.roc_auc_score(yc, p[keep, c]))
    assert boot[b] == pytest.approx(np.mean(per), rel=1e-6)


def test_interval_and_improvement():
  lo, hi = metrics.interval(np.arange(101, dtype=float))
  assert (lo, hi) == (pytest.approx(2.5), pytest.approx(97.5))
  assert metrics.improvement_percent(0.783, 0.911, lower_is_better=True) == pytest.approx(
      100 * 0.128 / 0.911)
  assert metrics.improvement_percent(0.897, 0.88, lower_is_better=False) == pytest.approx(
      100 * 0.017 / 0.88)


def test_include_restricts_the_macro_and_its_bootstrap():
  rng = np.random.default_rng(2)
  y = rng.integers(0, 2, (120, 3))
  p = np.clip(0.4 * y + 0.6 * rng.random((120, 3)), 0, 1)
  p[:, 2] = rng.random(120)
  include = np.array([True, True, False])
  m = metrics.chronic_metrics(y, p, include_C=include)
  per = [r["auroc"] for r in m["per_condition"]]
  assert m["macro_auroc"] == pytest.approx(np.mean(per[:2]))
  assert m["n_conditions"] == 2 and [r["in_macro"] for r in m["per_condition"]] == [1, 1, 0]
  assert m["micro_auroc"] == pytest.approx(metrics.auroc(y.ravel(), p.ravel()))  # all pairs
  full = metrics.bootstrap_macro_auroc(y, p, num_samples=40, seed=1)
  two = metrics.bootstrap_macro_auroc(y, p, num_samples=40, seed=1, include_C=include)
  one_two = metrics.bootstrap_macro_auroc(y[:, :2], p[:, :2], num_samples=40, seed=1)
  np.testing.assert_allclose(two, one_two)
  assert not np.allclose(full, two)
  with pytest.raises(ValueError, match="include_C"):
    metrics.chronic_metrics(y, p, include_C=[True])


def test_incident_positives_and_gap_closed():
  y = np.array([[1, 1], [1, 0], [0, 1]])
  prior = np.array([[1, 0], [0, 0], [0, 0]])
  np.testing.assert_array_equal(metrics.incident_positives(y, prior), [1, 2])
  # Errors (lower is better) and scores use the same share: 0 at the baseline, 100 at the oracle.
  assert metrics.gap_closed_percent(0.65, 0.70, 0.60) == pytest.approx(50.0)
  assert metrics.gap_closed_percent(0.95, 0.90, 1.00) == pytest.approx(50.0)
  assert metrics.gap_closed_percent(0.88, 0.90, 1.00) == pytest.approx(-20.0)
