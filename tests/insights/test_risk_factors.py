"""Risk factors: counterfactual add of an event, aggregated over members with intervals."""

import os

import numpy as np

from lmm_jax.data.vocab import Vocabulary
from lmm_jax.insights import risk_factors as rf


def _row(tokens, prefix=2, seq=10):
  t = np.zeros(seq, np.int32)
  t[:len(tokens)] = tokens
  seg = (np.arange(seq) < len(tokens)).astype(np.int32)
  return {"tokens": t, "age": np.where(seg > 0, 60.0, 0.0).astype(np.float32),
          "days": np.arange(seq, dtype=np.float32) * seg, "segment_ids": seg,
          "positions": np.arange(seq, dtype=np.int32) * seg, "length": np.int32(len(tokens)),
          "prefix_len": np.int32(prefix)}


def test_risk_factors_aggregate_over_members_with_intervals():
  """Output 0 doubles when token 30 is in the history; output 1 is untouched; token 31 does
  nothing. Members 0-9 already have token 30 (their output 0 is already doubled)."""
  rng = np.random.default_rng(0)
  # The prefix's second token (100 + member) identifies the member: the edit never drops it.
  rows = [_row([1, 100 + i, 30, 7]) if i < 10 else
          _row([1, 100 + i] + list(rng.integers(5, 9, size=3))) for i in range(40)]
  base = rng.uniform(0.1, 0.3, size=40)

  def outputs_fn(rs):
    out = np.zeros((len(rs), 2))
    for i, r in enumerate(rs):
      has = 30 in r["tokens"][:int(r["length"])]
      out[i] = [base[int(r["tokens"][1]) - 100] * (2.0 if has else 1.0), 5.0]
    return out

  cands = [rf.Candidate("diagnosis", 30, (9, 30), "token 30"),
           rf.Candidate("drug", 31, (9, 31), "token 31")]
  counted = np.ones((40, 2), bool)
  counted[:10, 0] = False                    # 'at risk' of output 0: members without token 30
  res = rf.risk_factors(outputs_fn, rows, cands, counted_NxO=counted, num_bootstrap=100)
  np.testing.assert_allclose(res.ratio.estimate[0], [2.0, 1.0])
  np.testing.assert_allclose(res.ratio.estimate[1], [1.0, 1.0])
  assert res.ratio.lower[0, 0] == res.ratio.upper[0, 0] == 2.0
  np.testing.assert_allclose(res.delta_KxO[0, 0], base[10:].mean())
  assert list(res.members_with_K) == [10, 0]
  assert list(res.members_counted_O) == [30, 40] and res.num_members == 40
  assert rf.top_factors(res, 0) == [0, 1]


def test_candidates_cover_kinds_and_utilization(tiny_data_dir):
  tiny_vocab = Vocabulary.load(os.path.join(tiny_data_dir, "vocab.json"))
  cands = rf.candidates(tiny_vocab, per_kind=2)
  kinds = {c.kind for c in cands}
  assert {"diagnosis", "procedure", "drug", "utilization"} <= kinds
  for c in cands:
    assert c.token in c.tokens and c.description
    assert not (c.kind == "diagnosis" and len(tiny_vocab.tokens[c.token].split("//")[1]) == 3)
  util = [c for c in cands if c.kind == "utilization"]
  assert any(c.description == "emergency visit" for c in util)


def test_agreement_between_two_runs():
  est_a = np.array([[2.0, 1.5], [0.8, np.nan]])
  low_a = np.array([[1.5, 1.1], [0.6, np.nan]])
  est_b = np.array([[1.8, 1.2], [0.9, 3.0]])
  low_b = np.array([[1.2, 0.9], [0.7, 2.0]])
  r = rf.agreement(est_a, low_a, est_b, low_b)
  assert r["cells"] == 3 and r["above_1_here"] == 2
  np.testing.assert_allclose(r["spearman"], 1.0)
  np.testing.assert_allclose(r["replicated_share"], 0.5)
