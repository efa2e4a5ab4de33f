"""Risk factors of any token kind for any head: counterfactual add of an event, over members.

For a candidate event E (a claim coding one diagnosis, procedure or drug token; or a utilization
event: an emergency visit, an inpatient stay, ...) and a sample of N members, append E to every
member's history (`relationships.append_tokens`) and compare the head's outputs with the unedited
ones: the risk ratio of output o is mean_i p1[i, o] / mean_i p0[i, o] over the members counted
for o (for a condition's onset, those at risk: the condition not coded before the index date; for
cost, everyone), with a paired bootstrap interval over members (`uncertainty`). One model call per
(member, candidate) gives every output of the head at once, so all conditions share the cost.

The count shown beside a factor is the number of sampled members whose history already holds its
token (how common it is; cells under 11 are suppressed); the estimate itself is over all N.

Dimension letters: N members, K candidates, O outputs, B bootstrap replicates.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats
import tqdm

from lmm_jax.conventions import TokenKind
from lmm_jax.insights import relationships as rel
from lmm_jax.insights import uncertainty

Row = Mapping[str, np.ndarray]

# Token kind -> (label, the claim type token that carries it in an appended event; None: bare).
KIND_EVENTS: dict[int, tuple[str, str | None]] = {
    TokenKind.DIAGNOSIS: ("diagnosis", "CLAIM//PROFESSIONAL"),
    TokenKind.PROCEDURE: ("procedure", "CLAIM//PROFESSIONAL"),
    TokenKind.DRUG: ("drug", "CLAIM//PHARMACY"),
    TokenKind.OTHER: ("other code", None),
}
# Utilization events: a claim of this type (with its usual place of service when the vocabulary
# has it), no diagnosis: what the visit itself adds.
UTILIZATION_EVENTS: dict[str, tuple[str, ...]] = {
    "emergency visit": ("CLAIM//EMERGENCY", "POS//23"),
    "inpatient stay": ("CLAIM//INPATIENT", "POS//21"),
    "skilled nursing stay": ("CLAIM//SNF", "POS//31"),
    "home health visit": ("CLAIM//HOME_HEALTH", "POS//12"),
    "outpatient hospital visit": ("CLAIM//OUTPATIENT", "POS//22"),
}


@dataclasses.dataclass(frozen=True)
class Candidate:
  kind: str                # 'diagnosis', 'procedure', 'drug', 'other code', 'utilization'
  token: int               # the token whose presence in a history is counted
  tokens: tuple[int, ...]  # the appended event
  description: str


def candidates(vocab, *, per_kind: int = 6, utilization: bool = True) -> list[Candidate]:
  """The `per_kind` most frequent (train counts) tokens of each kind of KIND_EVENTS, plus the
  utilization events the vocabulary can code. ICD-10-CM 3-character category tokens are left out
  (the full codes stand for them) and so are unknown-code tokens."""
  out = []
  kinds = np.asarray(vocab.kinds)
  counts = np.asarray(vocab.counts)
  for kind, (label, carrier) in KIND_EVENTS.items():
    pool = [i for i in np.flatnonzero(kinds == kind) if counts[i] > 0 and
            "UNK" not in vocab.tokens[i] and not _is_category(vocab.tokens[i])]
    pool.sort(key=lambda i: (-counts[i], i))
    head = vocab.get(carrier) if carrier else None
    for i in pool[:per_kind]:
      toks = ((int(head),) if head is not None else ()) + (int(i),)
      out.append(Candidate(label, int(i), toks, vocab.describe(int(i))))
  if utilization:
    for label, names in UTILIZATION_EVENTS.items():
      ids = [vocab.get(n) for n in names]
      if ids[0] is None:
        continue
      toks = tuple(int(i) for i in ids if i is not None)
      out.append(Candidate("utilization", toks[0], toks, label))
  return out


def _is_category(token: str) -> bool:
  system, _, code = token.partition("//")
  return system == "ICD10CM" and len(code) == 3


@dataclasses.dataclass
class RiskFactors:
  candidates: list[Candidate]
  ratio: uncertainty.Interval     # [K, O] mean p1 / mean p0, with bootstrap interval
  delta_KxO: np.ndarray           # mean p1 - mean p0 (output units: dollars, probability)
  members_with_K: np.ndarray      # sampled members whose history holds the candidate's token
  members_counted_O: np.ndarray   # members counted per output (at risk)
  num_members: int


def risk_factors(outputs_fn: Callable[[Sequence[Row]], np.ndarray], rows: Sequence[Row],
                 cands: Sequence[Candidate], *, counted_NxO: np.ndarray | None = None,
                 num_bootstrap: int = 200, seed: int = 0, progress: bool = False) -> RiskFactors:
  """Counterfactual add of each candidate event to every row (see the module docstring).

  Args:
    outputs_fn: rows -> float[N, O] the head's outputs (probabilities or dollars, not logits).
    rows: the member sample.
    cands: the candidate events.
    counted_NxO: bool, the members counted for each output (default all).
    num_bootstrap: member resamples of the paired bootstrap.
  """
  if not cands:
    raise ValueError("no risk-factor candidates (the vocabulary has no token of any kind)")
  p0 = np.asarray(outputs_fn(rows), np.float64)
  if p0.ndim == 1:
    p0 = p0[:, None]
  n, o = p0.shape
  counted = np.ones((n, o), bool) if counted_NxO is None else np.asarray(counted_NxO, bool)
  w = np.concatenate([np.ones((1, n)), uncertainty.bootstrap_weights(n, num_bootstrap, seed)])
  k = len(cands)
  est, reps = np.empty((k, o)), np.empty((num_bootstrap, k, o))
  delta = np.empty((k, o))
  have = np.zeros(k, np.int64)
  items = tqdm.tqdm(cands, desc="risk factors", unit="event") if progress else cands
  for j, c in enumerate(items):
    p1 = np.asarray(outputs_fn([rel.append_tokens(r, c.tokens) for r in rows]), np.float64)
    ratio, d, _ = uncertainty.paired_ratio(p1.reshape(n, o), p0, counted, w)
    est[j], reps[:, j], delta[j] = ratio[0], ratio[1:], d[0]
    have[j] = sum(int(c.token in np.asarray(r["tokens"])[int(r["prefix_len"]):int(r["length"])])
                  for r in rows)
  return RiskFactors(list(cands), uncertainty.ratio_interval(est, reps), delta, have,
                     counted.sum(0), n)


def top_factors(rf: RiskFactors, output: int, *, top: int = 10) -> list[int]:
  """Candidate indices for one output, best (highest interval lower bound) first."""
  order = uncertainty.rank_by_lower_bound(rf.ratio.lower[:, output])
  return [int(i) for i in order[:top]]


def agreement(est_a: np.ndarray, lower_a: np.ndarray, est_b: np.ndarray, lower_b: np.ndarray
              ) -> dict[str, float]:
  """Two runs' ratios over the same cells: Spearman of the log ratios (cells finite in both) and
  the share of the cells with lower bound > 1 in run a that have it in run b."""
  ok = (np.isfinite(est_a) & np.isfinite(est_b) & (est_a > 0) & (est_b > 0) &
        np.isfinite(lower_a) & np.isfinite(lower_b))
  n = int(ok.sum())
  rho = float(stats.spearmanr(np.log(est_a[ok]), np.log(est_b[ok])).statistic) if n >= 3 \
      else float("nan")
  up = ok & (lower_a > 1)
  return {"spearman": rho, "cells": n, "above_1_here": int(up.sum()),
          "replicated_share": float((lower_b[up] > 1).mean()) if up.any() else float("nan")}
