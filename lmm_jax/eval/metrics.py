"""Metrics of the cost and chronic-condition tasks, and seeded, vectorized bootstrap intervals.

Cost metrics follow the Society of Actuaries studies of claims-based risk models:
  MAE   = mean |y - yhat|
  NMAE  = MAE / mean(y)                                  (the paper's headline; lower is better)
  R^2   = 1 - sum (y - yhat)^2 / sum (y - mean(y))^2
  CPM   = 1 - sum |y - yhat| / sum |y - mean(y)|         (Cumming's Prediction Measure)
  predictive ratio = sum(yhat) / sum(y) within a group (here: deciles of predicted cost)
Chronic-condition metrics: per-condition AUROC and AUPRC (scikit-learn; AUPRC is average
precision), their macro (mean over conditions) and micro (all member-condition pairs pooled)
averages, the Brier score and the expected calibration error (ECE, equal-width probability bins).

The bootstrap resamples members with replacement. A resample is represented by a count vector
(how often each member was drawn), so every metric of a resample is a weighted sum and all
resamples of a chunk are computed at once with matrix operations. The draws depend only on
(number of members, number of resamples, seed): two models evaluated on the same members in the
same order see the same resamples, which makes paired intervals (e.g. of an improvement) exact.
"""

from __future__ import annotations

from typing import Iterator, Mapping, Sequence

import numpy as np
from sklearn import metrics as sk_metrics

from lmm_jax import conventions

DEFAULT_BOOTSTRAP_SAMPLES = 1000
MIN_NEW_ONSET_POSITIVES = 30  # new-onset macro AUROC: conditions with at least this many onsets
_MAX_CHUNK_ELEMENTS = 1 << 22  # resamples x members per vectorized chunk (32 MiB of float64)


def _vector(name: str, x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} has {int(np.sum(~np.isfinite(x)))} non-finite value(s)")
  return x


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
  y = _vector("y_true", y_true)
  yhat = _vector("y_pred", y_pred)
  if y.shape != yhat.shape:
    raise ValueError(f"y_true {y.shape} and y_pred {yhat.shape} differ in shape")
  if y.size == 0:
    raise ValueError("no members to evaluate")
  return y, yhat


def _safe_div(a: float, b: float) -> float:
  return float(a / b) if b != 0 else float("nan")


# ----------------------------------------------------------------------------------------------
# Cost.


def cap(y, limit: float = conventions.COST_CAP) -> np.ndarray:
  """Costs truncated at `limit` (the SOA's $250k-capped target)."""
  return np.minimum(np.asarray(y, np.float64), limit)


def cost_metrics(y_true, y_pred) -> dict[str, float]:
  """n, mean_true, mean_pred, mae, nmae, r2, cpm of one model on one target."""
  y, yhat = _pair(y_true, y_pred)
  err = np.abs(y - yhat)
  mean = y.mean()
  mae = err.mean()
  return {
      "n": int(y.size),
      "mean_true": float(mean),
      "mean_pred": float(yhat.mean()),
      "mae": float(mae),
      "nmae": _safe_div(mae, mean),
      "r2": 1.0 - _safe_div(np.sum((y - yhat) ** 2), np.sum((y - mean) ** 2)),
      "cpm": 1.0 - _safe_div(err.sum(), np.abs(y - mean).sum()),
  }


def predictive_ratios(y_true, y_pred, num_groups: int = 10) -> dict[str, np.ndarray]:
  """sum(yhat) / sum(y) within groups of (nearly) equal size ordered by predicted cost.

  Ties in the prediction are broken by position (a stable sort), so a constant model still gets
  `num_groups` groups. Returns group (1-based), n, mean_pred, mean_true and ratio arrays.
  """
  y, yhat = _pair(y_true, y_pred)
  if num_groups < 1 or num_groups > y.size:
    raise ValueError(f"num_groups={num_groups} must be in [1, {y.size}]")
  groups = np.array_split(np.argsort(yhat, kind="stable"), num_groups)
  n = np.array([len(g) for g in groups])
  sum_pred = np.array([yhat[g].sum() for g in groups])
  sum_true = np.array([y[g].sum() for g in groups])
  with np.errstate(divide="ignore", invalid="ignore"):
    ratio = np.where(sum_true > 0, sum_pred / np.where(sum_true > 0, sum_true, 1.0), np.nan)
  return {"group": np.arange(1, num_groups + 1), "n": n, "mean_pred": sum_pred / n,
          "mean_true": sum_true / n, "ratio": ratio}


# ----------------------------------------------------------------------------------------------
# Binary classification (chronic conditions).


def _labels(name: str, y) -> np.ndarray:
  y = np.asarray(y)
  bad = ~np.isin(y, (0, 1))
  if np.any(bad):
    raise ValueError(f"{name} must be 0/1; found {int(bad.sum())} other value(s), e.g. "
                     f"{y[bad].ravel()[0]!r}")
  return y.astype(np.int8)


def _probabilities(name: str, p) -> np.ndarray:
  p = np.asarray(p, np.float64)
  bad = ~np.isfinite(p) | (p < 0) | (p > 1)
  if np.any(bad):
    raise ValueError(f"{name} must be probabilities in [0, 1]; found {int(bad.sum())} value(s) "
                     f"outside, e.g. {p[bad].ravel()[0]!r}")
  return p


def auroc(y_true, y_score) -> float:
  """Area under the ROC curve; NaN when only one class is present."""
  y = _labels("y_true", y_true)
  if y.size == 0 or y.min() == y.max():
    return float("nan")
  return float(sk_metrics.roc_auc_score(y, np.asarray(y_score, np.float64)))


def auprc(y_true, y_score) -> float:
  """Area under the precision-recall curve (average precision); NaN without positives."""
  y = _labels("y_true", y_true)
  if y.size == 0 or y.max() == 0:
    return float("nan")
  return float(sk_metrics.average_precision_score(y, np.asarray(y_score, np.float64)))


def brier(y_true, p) -> float:
  y = _labels("y_true", y_true)
  p = _probabilities("y_pred", p)
  return float(np.mean((p - y) ** 2)) if y.size else float("nan")


def _bins(p: np.ndarray, num_bins: int) -> np.ndarray:
  # Equal-width bins on [0, 1]; p == 1 falls in the last bin.
  return np.minimum((p * num_bins).astype(np.int64), num_bins - 1)


def calibration_curve(y_true, p, num_bins: int = 10) -> dict[str, np.ndarray]:
  """Mean predicted probability, observed frequency and count of each non-empty bin."""
  y = _labels("y_true", y_true).astype(np.float64)
  p = _probabilities("y_pred", p)
  b = _bins(p, num_bins)
  count = np.bincount(b, minlength=num_bins)
  keep = count > 0
  sum_p = np.bincount(b, weights=p, minlength=num_bins)
  sum_y = np.bincount(b, weights=y, minlength=num_bins)
  return {"mean_pred": sum_p[keep] / count[keep], "frac_pos": sum_y[keep] / count[keep],
          "count": count[keep]}


def expected_calibration_error(y_true, p, num_bins: int = 10) -> float:
  """sum over bins of (bin share) * |observed frequency - mean predicted probability|."""
  curve = calibration_curve(y_true, p, num_bins)
  total = curve["count"].sum()
  if total == 0:
    return float("nan")
  gap = np.abs(curve["frac_pos"] - curve["mean_pred"])
  return float(np.sum(curve["count"] / total * gap))


def new_onset_mask(y_prior_NxC) -> np.ndarray:
  """bool[N, C]: members at risk of a new onset (condition not coded before the index date)."""
  return _labels("y_prior", y_prior_NxC) == 0


def _matrices(y_true_NxC, y_pred_NxC, mask_NxC):
  y = _labels("y_true", y_true_NxC)
  p = _probabilities("y_pred", y_pred_NxC)
  if y.ndim != 2 or y.shape != p.shape:
    raise ValueError(f"y_true {y.shape} and y_pred {p.shape} must be the same [N, C] shape")
  mask = np.ones(y.shape, bool) if mask_NxC is None else np.asarray(mask_NxC, bool)
  if mask.shape != y.shape:
    raise ValueError(f"mask {mask.shape} differs from y_true {y.shape}")
  return y, p, mask


def incident_positives(y_true_NxC, y_prior_NxC) -> np.ndarray:
  """int[C]: new onsets per condition (coded in the target window, not before the index)."""
  y = _labels("y_true", y_true_NxC)
  return np.sum((y == 1) & new_onset_mask(y_prior_NxC), axis=0)


def _include(include_C, num_conditions: int) -> np.ndarray:
  if include_C is None:
    return np.ones(num_conditions, bool)
  include = np.asarray(include_C, bool)
  if include.shape != (num_conditions,):
    raise ValueError(f"include_C has shape {include.shape}, expected ({num_conditions},)")
  return include


def chronic_metrics(y_true_NxC, y_pred_NxC, mask_NxC=None,
                    names: Sequence[str] | None = None, num_bins: int = 10,
                    include_C=None) -> dict:
  """Per-condition and averaged metrics over the member-condition pairs where mask is True.

  include_C (bool[C], default all) restricts the macro averages to some conditions (e.g. those
  with enough new onsets); the micro averages, Brier and ECE pool all evaluated pairs.
  Returns {"per_condition": [{condition, n, n_pos, auroc, auprc, brier, ece, in_macro}, ...],
  "macro_auroc", "macro_auprc" (means over included conditions with both classes present),
  "micro_auroc", "micro_auprc", "brier", "ece" (all evaluated pairs pooled), "n_pairs",
  "n_conditions" (conditions entering the macro averages)}.
  """
  y, p, mask = _matrices(y_true_NxC, y_pred_NxC, mask_NxC)
  include = _include(include_C, y.shape[1])
  names = list(names) if names is not None else [f"c{i}" for i in range(y.shape[1])]
  if len(names) != y.shape[1]:
    raise ValueError(f"{len(names)} names for {y.shape[1]} conditions")
  rows = []
  for c, name in enumerate(names):
    m = mask[:, c]
    yc, pc = y[m, c], p[m, c]
    rows.append({
        "condition": name, "n": int(m.sum()), "n_pos": int(yc.sum()),
        "auroc": auroc(yc, pc), "auprc": auprc(yc, pc),
        "brier": brier(yc, pc) if yc.size else float("nan"),
        "ece": expected_calibration_error(yc, pc, num_bins) if yc.size else float("nan"),
    })
  aurocs = np.array([r["auroc"] for r in rows])
  auprcs = np.array([r["auprc"] for r in rows])
  valid = ~np.isnan(aurocs) & include
  for r, v in zip(rows, valid):
    r["in_macro"] = bool(v)
  yf, pf = y[mask], p[mask]
  return {
      "per_condition": rows,
      "macro_auroc": float(aurocs[valid].mean()) if valid.any() else float("nan"),
      "macro_auprc": float(auprcs[valid].mean()) if valid.any() else float("nan"),
      "micro_auroc": auroc(yf, pf),
      "micro_auprc": auprc(yf, pf),
      "brier": brier(yf, pf) if yf.size else float("nan"),
      "ece": expected_calibration_error(yf, pf, num_bins) if yf.size else float("nan"),
      "n_pairs": int(mask.sum()),
      "n_conditions": int(valid.sum()),
  }


# ----------------------------------------------------------------------------------------------
# Bootstrap.


def bootstrap_counts(num_members: int, num_samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> Iterator[np.ndarray]:
  """Chunks of int32[b, num_members] draw counts; b sums to num_samples over the chunks.

  Deterministic in (num_members, num_samples, seed) only: the chunking depends on them alone.
  """
  if num_members < 1 or num_samples < 1:
    raise ValueError(f"need members ({num_members}) and samples ({num_samples}) >= 1")
  rng = np.random.default_rng(seed)
  rows = max(1, min(num_samples, _MAX_CHUNK_ELEMENTS // num_members))
  done = 0
  while done < num_samples:
    b = min(rows, num_samples - done)
    idx_BxN = rng.integers(0, num_members, size=(b, num_members))
    flat = (idx_BxN + (np.arange(b) * num_members)[:, None]).ravel()
    yield np.bincount(flat, minlength=b * num_members).reshape(b, num_members).astype(np.int32)
    done += b


def bootstrap_cost(y_true, y_pred, *, num_samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                   seed: int = 0) -> dict[str, np.ndarray]:
  """Bootstrap distributions (float64[num_samples]) of nmae, mae, r2 and cpm."""
  y, yhat = _pair(y_true, y_pred)
  n = y.size
  err = np.abs(y - yhat)
  sq = (y - yhat) ** 2
  out = {k: [] for k in ("nmae", "mae", "r2", "cpm")}
  for w_BxN in bootstrap_counts(n, num_samples, seed):
    w = w_BxN.astype(np.float64)
    mean_B = w @ y / n
    mae_B = w @ err / n
    dev_BxN = y[None, :] - mean_B[:, None]
    sst_B = np.sum(w * dev_BxN ** 2, axis=1)
    sad_B = np.sum(w * np.abs(dev_BxN), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
      out["mae"].append(mae_B)
      out["nmae"].append(np.where(mean_B != 0, mae_B / mean_B, np.nan))
      out["r2"].append(np.where(sst_B > 0, 1.0 - (w @ sq) / sst_B, np.nan))
      out["cpm"].append(np.where(sad_B > 0, 1.0 - (w @ err) / sad_B, np.nan))
  return {k: np.concatenate(v) for k, v in out.items()}


def _weighted_auroc(w_BxN: np.ndarray, members_M: np.ndarray, y_M: np.ndarray,
                    s_M: np.ndarray) -> np.ndarray:
  """AUROC of every resample (rows of draw counts) at once; ties count one half (as sklearn).

  members_M selects the evaluated members (columns of w_BxN) whose labels and scores are y_M, s_M.
  """
  order = np.argsort(s_M, kind="stable")
  s, y = s_M[order], y_M[order]
  # Counts are small integers: exact in float32, which halves the memory traffic.
  w = w_BxN[:, members_M[order]].astype(np.float32)
  is_pos = (y == 1)
  pos_BxM = w * is_pos
  neg_BxM = w - pos_BxM
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
  if starts.size < s.size:  # tied scores: sum within groups of equal score
    pos_BxM = np.add.reduceat(pos_BxM, starts, axis=1)
    neg_BxM = np.add.reduceat(neg_BxM, starts, axis=1)
  neg_cum_BxM = np.cumsum(neg_BxM, axis=1, dtype=np.float64)
  # Negatives strictly below plus half of the tied ones: cum - neg/2.
  num_B = np.einsum("bm,bm->b", pos_BxM, neg_cum_BxM - 0.5 * neg_BxM)
  den_B = pos_BxM.sum(1, dtype=np.float64) * neg_BxM.sum(1, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(den_B > 0, num_B / np.where(den_B > 0, den_B, 1.0), np.nan)


def bootstrap_macro_auroc(y_true_NxC, y_pred_NxC, mask_NxC=None, *,
                          num_samples: int = DEFAULT_BOOTSTRAP_SAMPLES,
                          seed: int = 0, include_C=None) -> np.ndarray:
  """Bootstrap distribution (float64[num_samples]) of the macro AUROC over members.

  Conditions without both classes among the evaluated pairs of the full sample, or not in
  include_C, are left out, as in `chronic_metrics`; a resample in which a condition lacks a class
  averages over the rest.
  """
  y, p, mask = _matrices(y_true_NxC, y_pred_NxC, mask_NxC)
  include = _include(include_C, y.shape[1])
  cols = [c for c in range(y.shape[1])
          if include[c] and mask[:, c].any() and 0 < y[mask[:, c], c].sum() < mask[:, c].sum()]
  members = {c: np.flatnonzero(mask[:, c]) for c in cols}
  chunks = []
  for w_BxN in bootstrap_counts(y.shape[0], num_samples, seed):
    if not cols:
      chunks.append(np.full(w_BxN.shape[0], np.nan))
      continue
    per_BxC = np.stack([_weighted_auroc(w_BxN, members[c], y[members[c], c], p[members[c], c])
                        for c in cols], axis=1)
    counted_B = np.sum(~np.isnan(per_BxC), axis=1)
    total_B = np.nansum(per_BxC, axis=1)
    chunks.append(np.where(counted_B > 0, total_B / np.maximum(counted_B, 1), np.nan))
  return np.concatenate(chunks)


def interval(samples, alpha: float = 0.05) -> tuple[float, float]:
  """Percentile interval (default 95%) of a bootstrap distribution, ignoring NaN resamples."""
  s = np.asarray(samples, np.float64)
  s = s[~np.isnan(s)]
  if s.size == 0:
    return float("nan"), float("nan")
  lo, hi = np.percentile(s, [100 * alpha / 2, 100 * (1 - alpha / 2)])
  return float(lo), float(hi)


def improvement_percent(model, baseline, lower_is_better: bool):
  """Relative improvement in percent: (base - model) / base for errors, (model - base) / base else.

  Works on floats or on paired bootstrap arrays (same resamples for both).
  """
  model = np.asarray(model, np.float64)
  baseline = np.asarray(baseline, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    diff = baseline - model if lower_is_better else model - baseline
    return 100.0 * diff / baseline


def gap_closed_percent(model, baseline, limit):
  """Share of the headroom (limit - baseline) a model closes, in percent: 0 at the baseline, 100
  at the limit (the oracle), negative below the baseline; the same formula for errors and scores.
  Floats or paired bootstrap arrays (the same resamples for all three)."""
  model, baseline, limit = (np.asarray(a, np.float64) for a in (model, baseline, limit))
  gap = limit - baseline
  with np.errstate(divide="ignore", invalid="ignore"):  # no headroom: NaN (left out of intervals)
    return np.where(gap != 0, 100.0 * (model - baseline) / np.where(gap != 0, gap, 1.0), np.nan)


def summarize(samples: Mapping[str, np.ndarray], alpha: float = 0.05) -> dict[str, tuple]:
  return {k: interval(v, alpha) for k, v in samples.items()}
