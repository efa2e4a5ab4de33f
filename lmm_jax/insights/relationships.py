"""Condition-to-condition relationships: the model's lift against the data's, and link recovery.

For an ordered pair (A, B) of chronic conditions and members *at risk* of a new onset of B (B not
coded before the index date):

- Empirical lift, from task records: P(B in the next 12 months | A prevalent) divided by
  P(B in the next 12 months | A not prevalent), the first rate shrunk towards the second by a few
  pseudo-members (small groups give lifts near 1, not ratios of tiny counts).
- Model (counterfactual) lift: take held-out members without A, append an edit coding A to their
  history (`condition_tokens`: by default a case, two claims on different days), and divide the
  mean predicted P(B) of the chronic head by the mean under a reference edit (`placebo_tokens`,
  the same claims coding a diagnosis of no condition) or on the unedited histories. Everything else about the member stays fixed, so this is the model's own
  answer to "what does A change about B", free of the age and sex confounding of the data's lift.

On the synthetic world the true directed links (`lmm_jax.synth.model.TRUE_COMORBIDITY_LINKS`,
A multiplies the onset hazard of B) are known; `recovery` scores a lift matrix against them.

Matrices are indexed [A, B] over `lmm_jax.conditions.CONDITIONS` (C of them); the diagonal is NaN.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics
import tqdm

from lmm_jax import conditions
from lmm_jax.conventions import TokenKind
from lmm_jax.data import tokenizer
from lmm_jax.insights import uncertainty
from lmm_jax.synth import model as synth_model

Row = Mapping[str, np.ndarray]


@dataclasses.dataclass
class EmpiricalLift:
  lift_CxC: np.ndarray        # smoothed rate ratio (NaN on the diagonal)
  rate_with_CxC: np.ndarray   # P(B next | A prior, B not prior)
  rate_without_CxC: np.ndarray
  n_with_CxC: np.ndarray      # members at risk of B with A prior
  n_both_CxC: np.ndarray      # ... of whom B was coded in the next 12 months (co-occurrence)


def empirical_lift(cond_prior_NxC: np.ndarray, cond_next_NxC: np.ndarray, *,
                   prior_members: float = 10.0) -> EmpiricalLift:
  """Lift of new-onset B given prevalent A, over members at risk of B (see the module docstring).

  The rate with A is shrunk towards the rate without A by `prior_members` pseudo-members, so a
  pair seen in a handful of members gets a lift near 1 rather than a huge ratio of tiny counts
  (0: the raw ratio). The rate without A gets add-1/2 smoothing.
  """
  prior = np.asarray(cond_prior_NxC, bool)
  nxt = np.asarray(cond_next_NxC, bool)
  if prior.shape != nxt.shape or prior.ndim != 2:
    raise ValueError(f"cond_prior {prior.shape} and cond_next {nxt.shape} must be equal [N, C]")
  at_risk_NxC = ~prior
  onset_NxC = nxt & at_risk_NxC
  a = prior.astype(np.int64)
  not_a = (~prior).astype(np.int64)
  n_with = a.T @ at_risk_NxC.astype(np.int64)         # [A, B]
  n_both = a.T @ onset_NxC.astype(np.int64)
  n_without = not_a.T @ at_risk_NxC.astype(np.int64)
  k_without = not_a.T @ onset_NxC.astype(np.int64)
  with np.errstate(invalid="ignore", divide="ignore"):  # no member at risk: NaN
    smooth = 0.5 if prior_members > 0 else 0.0
    rate_without = (k_without + smooth) / (n_without + 2 * smooth)
    rate_with = (n_both + prior_members * rate_without) / (n_with + prior_members)
    lift = rate_with / rate_without
  np.fill_diagonal(lift, np.nan)
  return EmpiricalLift(lift, rate_with, rate_without, n_with, n_both)


# ------------------------------------------------------------------------------------------------
# Counterfactual edits.


# How a counterfactual edit codes condition A (see `condition_tokens`).
EDITS = ("case", "claim")


def condition_tokens(vocab, condition: int, edit: str = "case") -> list[int]:
  """Token ids that code `condition` in an appended history edit.

  edit='claim': one same-day professional claim: [CLAIM//PROFESSIONAL], [category], diagnosis.
  edit='case' (default): that claim twice, separated by the shortest time-gap token. The world
  (and the CCW rule of `lmm_jax.conditions`) makes a case of one facility claim or two other
  claims on different days, so a single professional claim is a rule-out diagnosis, not a case,
  and a model that learned the rule rightly gives it little weight. Two professional claims make
  a case without adding an admission (an inpatient claim would also add its own utilization
  effect). The diagnosis is the condition's most frequent (on train) full ICD-10-CM token; its
  3-character category token is added when the tokenizer writes them. Empty if the vocabulary
  has no diagnosis token of the condition.
  """
  if edit not in EDITS:
    raise ValueError(f"edit={edit!r}: expected one of {EDITS}")
  dx = np.flatnonzero((vocab.token_conditions[:, condition] > 0) &
                      (vocab.kinds == TokenKind.DIAGNOSIS))
  if not len(dx):
    return []
  # Prefer codes of A alone (hypertensive CKD, I12, codes both hypertension and CKD: an edit
  # with it would add two conditions), then full codes (with a dot) over categories; among them
  # the most frequent.
  only_a = [i for i in dx if vocab.token_conditions[i].sum() == vocab.token_conditions[i, condition]]
  dx = np.asarray(only_a) if only_a else dx
  full = [i for i in dx if "." in vocab.tokens[i]]
  pool = np.asarray(full if full else dx)
  return diagnosis_event(vocab, int(pool[np.argmax(vocab.counts[pool])]), edit)


def diagnosis_event(vocab, dx: int, edit: str = "case") -> list[int]:
  """The appended event coding diagnosis token `dx`: [CLAIM//PROFESSIONAL], [its 3-character
  category token, when the tokenizer writes them], dx; for edit='case' twice, separated by the
  shortest time-gap token."""
  out = []
  claim = vocab.get("CLAIM//PROFESSIONAL")
  if claim is not None:
    out.append(int(claim))
  code = vocab.tokens[dx].partition("//")[2]
  category = vocab.get(f"ICD10CM//{code.replace('.', '')[:3]}")
  tok_cfg = vocab.meta.get("tokenizer", {})
  if category is not None and category != dx and tok_cfg.get("icd10_category_tokens", True):
    out.append(int(category))
  out.append(dx)
  if edit == "case":
    gap = shortest_gap_token(vocab)
    out = out + ([gap] if gap is not None else []) + out
  return out


def placebo_tokens(vocab, edit: str = "case") -> list[int]:
  """The edit of `condition_tokens` with a diagnosis of no target condition (a negative control):
  the most frequent full ICD-10-CM code (train counts) outside every condition's code set,
  preferring a general examination (Z00: coded for anyone, of either sex), then chapter Z
  (encounter reasons, not a disease or a symptom that prompts a work-up). Empty if the
  vocabulary has none."""
  in_none = (vocab.token_conditions.sum(1) == 0) & (vocab.kinds == TokenKind.DIAGNOSIS)
  pool = [i for i in np.flatnonzero(in_none) if "." in vocab.tokens[i] and vocab.counts[i] > 0
          and vocab.tokens[i].startswith("ICD10CM//")]
  if not pool:
    return []
  for prefix in ("ICD10CM//Z00", "ICD10CM//Z"):
    preferred = [i for i in pool if vocab.tokens[i].startswith(prefix)]
    if preferred:
      pool = preferred
      break
  return diagnosis_event(vocab, int(max(pool, key=lambda i: (vocab.counts[i], -i))), edit)


def shortest_gap_token(vocab) -> int | None:
  """The id of the vocabulary's shortest time-gap token (TIME//...), None without one."""
  edges = vocab.meta.get("tokenizer", {}).get("time_gap_edges_days")
  if not edges:
    return None
  return vocab.get(f"TIME//{tokenizer.time_gap_labels(edges)[0]}")


def append_tokens(row: Row, token_ids: Sequence[int]) -> dict[str, np.ndarray]:
  """The row with token_ids appended after its last event (same day and age as that event).

  A full row drops its oldest events after the demographic prefix to make room, as the
  pipeline's 'recent' truncation would.
  """
  seq_len = len(row["tokens"])
  n, k = int(row["length"]), len(token_ids)
  prefix = int(row.get("prefix_len", 0))
  out = {key: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
         for key, v in row.items()}
  if k == 0:
    return out
  if n == 0:
    raise ValueError("cannot append to an empty history")
  seq_keys = [key for key in ("tokens", "age", "days", "days_before_index") if key in row]
  overflow = max(0, n + k - seq_len)
  if overflow > n - prefix:
    raise ValueError(f"seq_len={seq_len} leaves no room for {k} tokens after the prefix")
  keep = np.concatenate([np.arange(prefix), np.arange(prefix + overflow, n)])
  m = len(keep) + k
  for key in seq_keys:
    src = np.asarray(row[key])
    last = src[n - 1]
    buf = np.zeros(seq_len, src.dtype)
    buf[:len(keep)] = src[keep]
    buf[len(keep):m] = token_ids if key == "tokens" else last
    out[key] = buf
  # The prefix (with the first token) is never dropped, so days stay relative to it.
  out["segment_ids"] = (np.arange(seq_len) < m).astype(np.int32)
  out["positions"] = np.where(out["segment_ids"] > 0, np.arange(seq_len), 0).astype(np.int32)
  out["length"] = np.int32(m)
  return out


@dataclasses.dataclass
class ModelLift:
  lift_CxC: np.ndarray        # mean P(B | history + A) / mean P(B | history); NaN where unmeasured
  delta_CxC: np.ndarray       # mean P(B | history + A) - mean P(B | history)
  n_CxC: np.ndarray           # members the pair was measured on (without A, at risk of B)
  # Per-member predictions, for the paired bootstrap (`model_lift_bootstrap`):
  p0_NxC: np.ndarray | None = None          # unedited histories
  edited: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
  at_risk_NxC: np.ndarray | None = None     # B not coded before the index date
  # edited[a] = (member indices I without A, P(. | history + A) float[I, C])


def counterfactual_lift(prob_fn: Callable[[Sequence[Row]], np.ndarray], rows: Sequence[Row],
                        insert: Mapping[int, Sequence[int]], *,
                        reference: Sequence[int] | None = None, progress: bool = False
                        ) -> ModelLift:
  """The model's lift of B from adding A to histories lacking A (see the module docstring).

  Args:
    prob_fn: rows -> float[N, C] predicted probability of each condition in the next 12 months.
    rows: members (with cond_prior) to edit.
    insert: condition A -> the token ids that code it (`condition_tokens`); A without tokens
      stays NaN.
    reference: the denominator's edit (`placebo_tokens`): the lift divides P(B | history + A) by
      P(B | history + reference) instead of P(B | history), so what any appended claim does (more
      utilization, a newer last event) cancels and the lift is what coding *A* adds. None: the
      unedited histories.
    progress: a tqdm bar over conditions.
  """
  c = conditions.NUM_CONDITIONS
  prior_NxC = np.stack([np.asarray(r["cond_prior"], bool) for r in rows])
  p0_NxC = np.asarray(prob_fn(rows if reference is None else
                              [append_tokens(r, reference) for r in rows]), np.float64)
  lift = np.full((c, c), np.nan)
  delta = np.full((c, c), np.nan)
  count = np.zeros((c, c), np.int64)
  items = [(a, t) for a, t in sorted(insert.items()) if len(t)]
  edited = {}
  if progress:
    items = tqdm.tqdm(items, desc="counterfactual lift", unit="condition")
  for a, tokens in items:
    idx = np.flatnonzero(~prior_NxC[:, a])
    if not len(idx):
      continue
    p1 = np.asarray(prob_fn([append_tokens(rows[i], tokens) for i in idx]), np.float64)
    edited[a] = (idx, p1)
    at_risk_IxC = ~prior_NxC[idx]
    n_C = at_risk_IxC.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
      m1 = (p1 * at_risk_IxC).sum(0) / n_C
      m0 = (p0_NxC[idx] * at_risk_IxC).sum(0) / n_C
      lift[a] = np.where(n_C > 0, m1 / m0, np.nan)
      delta[a] = np.where(n_C > 0, m1 - m0, np.nan)
    count[a] = n_C
  np.fill_diagonal(lift, np.nan)
  np.fill_diagonal(delta, np.nan)
  np.fill_diagonal(count, 0)
  return ModelLift(lift, delta, count, p0_NxC, edited, ~prior_NxC)


def model_lift_replicates(ml: ModelLift, weights_BxN: np.ndarray) -> np.ndarray:
  """float[B, C, C] the model lift under each member resample: the same resampled members for
  the edited and the unedited histories (paired), members without A and at risk of B only."""
  c = conditions.NUM_CONDITIONS
  w = np.asarray(weights_BxN, np.float64)
  out = np.full((w.shape[0], c, c), np.nan)
  for a, (idx, p1) in ml.edited.items():
    out[:, a], _, _ = uncertainty.paired_ratio(p1, ml.p0_NxC[idx], ml.at_risk_NxC[idx],
                                               w[:, idx])
  out[:, np.arange(c), np.arange(c)] = np.nan
  return out


def empirical_lift_replicates(cond_prior_NxC: np.ndarray, cond_next_NxC: np.ndarray,
                              weights_BxN: np.ndarray, *, prior_members: float = 10.0
                              ) -> np.ndarray:
  """float[B, C, C] the empirical lift (same smoothing as `empirical_lift`) under each member
  resample of the train members."""
  prior = np.asarray(cond_prior_NxC, bool)
  at_risk = (~prior).astype(np.float64)
  onset = (np.asarray(cond_next_NxC, bool) & ~prior).astype(np.float64)
  a, not_a = prior.astype(np.float64), (~prior).astype(np.float64)
  smooth = 0.5 if prior_members > 0 else 0.0
  out = np.empty((len(weights_BxN),) + (prior.shape[1],) * 2)
  for k, w in enumerate(np.asarray(weights_BxN, np.float64)):
    wa, wn = a * w[:, None], not_a * w[:, None]
    n_with, n_both = wa.T @ at_risk, wa.T @ onset
    n_without, k_without = wn.T @ at_risk, wn.T @ onset
    with np.errstate(invalid="ignore", divide="ignore"):
      rate_without = (k_without + smooth) / (n_without + 2 * smooth)
      out[k] = ((n_both + prior_members * rate_without) / (n_with + prior_members)) / rate_without
    np.fill_diagonal(out[k], np.nan)
  return out


# ------------------------------------------------------------------------------------------------
# Specificity: what an edit of A does to B beyond what it does to every condition.


def _row_effect(log_L: np.ndarray) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # an unmeasured row stays NaN
    return np.nanmean(log_L, axis=-1, keepdims=True)


def _column_effect(log_L: np.ndarray) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(log_L, axis=-2, keepdims=True)


def _grand_effect(log_L: np.ndarray) -> np.ndarray:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.nanmean(log_L, axis=(-2, -1), keepdims=True)


# log lift -> its specific part. 'row': minus A's mean log lift over every B it was measured on
# (an edit that raises every onset, as coding hyperlipidemia does in a model that learned the
# world's confounding, is not evidence of a link to any one B); 'double': double centering (the
# residual of log lift ~ row + column: also B's mean log lift over every A removed, a condition
# that every edit raises).
ADJUSTMENTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda log_L: log_L,
    "row": lambda log_L: log_L - _row_effect(log_L),
    "double": lambda log_L: _double_centre(log_L),
}


def _double_centre(log_L: np.ndarray, sweeps: int = 20) -> np.ndarray:
  """Residual of the additive fit row + column of log_L: with the diagonal (and suppressed cells)
  missing, one subtraction of the row and column means is not exact, so alternate them (each
  sweep lowers the squared residual; it converges to the least-squares fit)."""
  r = log_L - _grand_effect(log_L)
  for _ in range(sweeps):
    r = r - _row_effect(r)
    r = r - _column_effect(r)
  return r


def specificity_adjust(lift_xCxC: np.ndarray, how: str = "double") -> np.ndarray:
  """The lift made specific to the pair (`ADJUSTMENTS`), on the log scale over the measured
  (finite, positive) cells of each [C, C] matrix; leading axes (bootstrap replicates) are kept,
  so the adjusted replicates give the adjusted lift's interval. NaN stays NaN."""
  if how not in ADJUSTMENTS:
    raise ValueError(f"lift adjustment {how!r}: expected one of {sorted(ADJUSTMENTS)}")
  lift = np.asarray(lift_xCxC, np.float64)
  if lift.ndim < 2 or lift.shape[-1] != lift.shape[-2]:
    raise ValueError(f"lift matrix must be [..., C, C], got shape {lift.shape}")
  ok = np.isfinite(lift) & (lift > 0)
  log_L = np.where(ok, np.log(np.where(ok, lift, 1.0)), np.nan)
  return np.where(ok, np.exp(ADJUSTMENTS[how](log_L)), np.nan)


# ------------------------------------------------------------------------------------------------
# Ranking and recovery.


@dataclasses.dataclass
class Pair:
  a: int
  b: int
  model_lift: float
  empirical_lift: float
  co_occurrence: int   # members at risk of B, with A prior, who had B coded next year
  true_link: bool | None = None


def ranked_pairs(model_lift_CxC: np.ndarray, emp: EmpiricalLift, *,
                 truth_CxC: np.ndarray | None = None, top: int = 15) -> list[Pair]:
  """The `top` pairs by model lift (measured pairs only)."""
  flat = np.where(np.isfinite(model_lift_CxC), model_lift_CxC, -np.inf).ravel()
  order = np.argsort(-flat, kind="stable")
  out = []
  for f in order[:top]:
    if not np.isfinite(flat[f]):
      break
    a, b = divmod(int(f), model_lift_CxC.shape[1])
    out.append(Pair(a, b, float(model_lift_CxC[a, b]), float(emp.lift_CxC[a, b]),
                    int(emp.n_both_CxC[a, b]),
                    None if truth_CxC is None else bool(truth_CxC[a, b])))
  return out


def novel_candidates(model_lift_CxC: np.ndarray, emp: EmpiricalLift, *, min_model_lift: float = 1.2,
                     max_co_occurrence: int = 5, truth_CxC: np.ndarray | None = None,
                     top: int = 10) -> list[Pair]:
  """Pairs the model rates as linked (lift >= min_model_lift) that the data barely shows directly.

  "Barely" means at most `max_co_occurrence` members had A and then a new B, or the empirical lift
  is below 1 (the data alone would not suggest the link).
  """
  pairs = ranked_pairs(model_lift_CxC, emp, truth_CxC=truth_CxC,
                       top=model_lift_CxC.size)
  keep = [p for p in pairs if p.model_lift >= min_model_lift and
          (p.co_occurrence <= max_co_occurrence or not p.empirical_lift >= 1.0)]
  return keep[:top]


def true_link_matrix(links: Sequence[tuple[str, str, float]] | None = None,
                     names: Sequence[str] = conditions.CONDITION_NAMES) -> np.ndarray:
  """bool[C, C]: the directed true links between target conditions (others are left out)."""
  if links is None:
    links = synth_model.TRUE_COMORBIDITY_LINKS
  index = {n: i for i, n in enumerate(names)}
  out = np.zeros((len(names), len(names)), bool)
  for a, b, _ in links:
    if a in index and b in index:
      out[index[a], index[b]] = True
  return out


def recovery(score_CxC: np.ndarray, truth_CxC: np.ndarray, *, threshold: float
             ) -> dict[str, float]:
  """Precision/recall of the links `score >= threshold` against the true links.

  Only measured (finite) off-diagonal pairs count as candidates; true links that could not be
  measured count as missed. Also reported: precision at k = number of true links (ranking by
  score; equal to recall at k when every true link was measured) and the average precision.
  """
  score = np.asarray(score_CxC, np.float64)
  truth = np.asarray(truth_CxC, bool)
  off = ~np.eye(score.shape[0], dtype=bool)
  measured = off & np.isfinite(score)
  pred = measured & (np.where(measured, score, -np.inf) >= threshold)
  num_true = int((truth & off).sum())
  tp = int((pred & truth).sum())
  npred = int(pred.sum())
  out = {"threshold": float(threshold), "num_true": num_true, "num_predicted": npred,
         "true_positives": tp,
         "precision": tp / npred if npred else float("nan"),
         "recall": tp / num_true if num_true else float("nan"),
         "num_measured": int(measured.sum()),
         "true_measured": int((truth & measured).sum())}
  s, t = score[measured], truth[measured]
  if num_true and len(s):
    k = min(num_true, len(s))
    top = np.argsort(-s, kind="stable")[:k]
    out["precision_at_k"] = float(t[top].mean())
    out["average_precision"] = (float(metrics.average_precision_score(t, s))
                                if 0 < t.sum() < len(t) else float("nan"))
  else:
    out["precision_at_k"] = out["average_precision"] = float("nan")
  return out


def hazard_ratio_matrix(links: Sequence[tuple[str, str, float]] | None = None,
                        names: Sequence[str] = conditions.CONDITION_NAMES) -> np.ndarray:
  """float[C, C]: the true hazard ratio of each directed link between target conditions, NaN
  elsewhere."""
  if links is None:
    links = synth_model.TRUE_COMORBIDITY_LINKS
  index = {n: i for i, n in enumerate(names)}
  out = np.full((len(names), len(names)), np.nan)
  for a, b, hr in links:
    if a in index and b in index:
      out[index[a], index[b]] = hr
  return out


def effect_size_correlation(lift_CxC: np.ndarray, hazard_ratio_CxC: np.ndarray
                            ) -> dict[str, float]:
  """Spearman rank correlation of the estimated lift with the true hazard ratio over the true
  links both measure (n of them; NaN below 3)."""
  ok = np.isfinite(lift_CxC) & np.isfinite(hazard_ratio_CxC)
  n = int(ok.sum())
  if n < 3:
    return {"spearman": float("nan"), "p_value": float("nan"), "n": n}
  r = stats.spearmanr(lift_CxC[ok], hazard_ratio_CxC[ok])
  return {"spearman": float(r.statistic), "p_value": float(r.pvalue), "n": n}
