"""Bootstrap intervals over members, ranking by lower bound, and the expected false links.

Every lift of the insights report is a ratio of two means over the same members: the mean of an
edited prediction (or of an outcome among members with A) over the mean of the unedited one.
`bootstrap_weights` draws B resamples of the N members once (the tables' resampler,
`lmm_jax.eval.metrics.bootstrap_counts`, so every interval of the project draws members one way);
a statistic evaluated
with a resample's weights on the per-member predictions gives one bootstrap replicate, so a
paired bootstrap (the same resampled members for the edited and unedited histories) costs matrix
products, not model calls.

Intervals are percentile intervals of the replicates. The p-value of "lift <= 1" is one-sided and
normal on the log scale with the bootstrap's standard error (z = log(lift) / se(log lift)); a
percentile p-value of B = 200 replicates cannot go below 1/201, too coarse for Benjamini-Hochberg
over hundreds of pairs. `expected_false` bounds the expected number of null pairs in a set S:
for the region {p <= t} with t = max_{i in S} p_i, the expected count of nulls in it is
m0 * t <= m * t (null p-values uniform), and S lies inside it.

The null is "the estimate's own lift is 1", so these count false links due to the member sample
(and, with seeds, training noise); a model that has learned a confounded association has a lift
truly above 1 that no member resample removes. On the synthetic world the report shows the actual
false count against the truth beside the bound.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import stats

from lmm_jax.eval import metrics


def bootstrap_weights(n: int, num_bootstrap: int, seed: int = 0) -> np.ndarray:
  """float64[B, N] member weights of B resamples with replacement (each row sums to N): the draw
  counts of `metrics.bootstrap_counts`, gathered into one matrix."""
  if n <= 0 or num_bootstrap <= 0:
    raise ValueError(f"bootstrap needs members and replicates, got n={n}, B={num_bootstrap}")
  return np.concatenate(list(metrics.bootstrap_counts(n, num_bootstrap, seed))).astype(np.float64)


def paired_ratio(p1_NxO: np.ndarray, p0_NxO: np.ndarray, mask_NxO: np.ndarray,
                 weights_BxN: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Weighted means over the masked members: (mean p1 / mean p0, mean p1 - mean p0, weight), each
  float[B, O]; NaN where a replicate has no masked member (or mean p0 is 0)."""
  m = np.asarray(mask_NxO, np.float64)
  w = np.asarray(weights_BxN, np.float64)
  den = w @ m
  s1 = w @ (np.asarray(p1_NxO, np.float64) * m)
  s0 = w @ (np.asarray(p0_NxO, np.float64) * m)
  with np.errstate(invalid="ignore", divide="ignore"):
    ratio = np.where(den > 0, s1 / s0, np.nan)
    delta = np.where(den > 0, (s1 - s0) / den, np.nan)
  return ratio, delta, den


@dataclasses.dataclass
class Interval:
  """A point estimate with its bootstrap percentile interval and one-sided p-value of <= null."""
  estimate: np.ndarray
  lower: np.ndarray
  upper: np.ndarray
  p_value: np.ndarray   # P(estimate this large | true ratio = null), normal on the log scale
  se_log: np.ndarray    # bootstrap standard error of log(estimate)


def ratio_interval(estimate: np.ndarray, replicates_Bx: np.ndarray, *, level: float = 0.95,
                   null: float = 1.0) -> Interval:
  """Percentile interval and log-normal one-sided p-value of a ratio from its replicates [B, ...].

  NaN replicates (a resample without the members a cell needs) are left out per cell; a cell
  with fewer than 2 finite replicates gets NaN bounds and p = NaN.
  """
  est = np.asarray(estimate, np.float64)
  rep = np.asarray(replicates_Bx, np.float64)
  alpha = (1.0 - level) / 2.0
  ok = np.isfinite(rep) & (rep > 0)
  enough = ok.sum(0) >= 2
  with np.errstate(invalid="ignore", divide="ignore"):
    logs = np.where(ok, np.log(np.where(ok, rep, 1.0)), np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: handled by `enough`
    lo = np.nanquantile(np.where(ok, rep, np.nan), alpha, axis=0)
    hi = np.nanquantile(np.where(ok, rep, np.nan), 1.0 - alpha, axis=0)
    se = np.nanstd(logs, axis=0, ddof=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    z = (np.log(np.where(est > 0, est, np.nan)) - np.log(null)) / se
  p = np.where(se > 0, stats.norm.sf(z), np.where(est > null, 0.0, 1.0))
  bad = ~enough | ~np.isfinite(est)
  return Interval(est, np.where(bad, np.nan, lo), np.where(bad, np.nan, hi),
                  np.where(bad, np.nan, p), np.where(bad, np.nan, se))


def rank_by_lower_bound(lower: np.ndarray) -> np.ndarray:
  """Flat indices of the finite cells, best (highest lower bound) first; ties keep index order."""
  flat = np.asarray(lower, np.float64).ravel()
  idx = np.flatnonzero(np.isfinite(flat))
  return idx[np.argsort(-flat[idx], kind="stable")]


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
  """BH-adjusted p-values (q-values) of the finite entries, same shape (NaN stays NaN)."""
  p = np.asarray(p_values, np.float64)
  flat = p.ravel()
  idx = np.flatnonzero(np.isfinite(flat))
  q = np.full(flat.shape, np.nan)
  m = len(idx)
  if m:
    order = idx[np.argsort(flat[idx], kind="stable")]
    ranked = flat[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
  return q.reshape(p.shape)


def expected_false(p_values: np.ndarray, selected_flat: np.ndarray) -> float:
  """Upper bound on the expected number of null cells among `selected_flat` (flat indices):
  min(|S|, m * max p over S), m the number of tested (finite) cells. See the module docstring."""
  p = np.asarray(p_values, np.float64).ravel()
  m = int(np.isfinite(p).sum())
  sel = np.asarray(selected_flat, np.int64)
  if not len(sel) or not m:
    return 0.0
  t = float(np.nanmax(p[sel])) if np.isfinite(p[sel]).any() else 1.0
  return float(min(len(sel), m * t))
