"""Lift, counterfactual lift, ranking and link recovery on hand-built cases."""

import os

import numpy as np
import pytest

from lmm_jax import conditions
from lmm_jax.conventions import TokenKind
from lmm_jax.data.vocab import Vocabulary
from lmm_jax.insights import relationships as rel

C = conditions.NUM_CONDITIONS


def test_empirical_lift_hand_counts():
  # Condition 0 = A, 1 = B. 10 members with A: 4 get a new B; 20 without A: 2 get a new B.
  # 5 more members with B prevalent are not at risk and must not count.
  n = 35
  prior = np.zeros((n, C), np.uint8)
  nxt = np.zeros((n, C), np.uint8)
  prior[:10, 0] = 1
  nxt[:4, 1] = 1
  nxt[10:12, 1] = 1
  prior[30:, 1] = 1
  nxt[30:, 1] = 1
  prior[30:, 0] = 1
  emp = rel.empirical_lift(prior, nxt, prior_members=0.0)
  assert emp.n_with_CxC[0, 1] == 10 and emp.n_both_CxC[0, 1] == 4
  np.testing.assert_allclose(emp.rate_with_CxC[0, 1], 0.4)
  np.testing.assert_allclose(emp.rate_without_CxC[0, 1], 0.1)
  np.testing.assert_allclose(emp.lift_CxC[0, 1], 4.0)
  assert np.isnan(emp.lift_CxC[1, 1])
  smooth = rel.empirical_lift(prior, nxt, prior_members=10.0)
  p0 = 2.5 / 21
  np.testing.assert_allclose(smooth.lift_CxC[0, 1], ((4 + 10 * p0) / 20) / p0)
  # A pair seen in no member has lift exactly 1 (shrunk to the base rate).
  np.testing.assert_allclose(smooth.lift_CxC[2, 3], 1.0)


def _row(tokens, length, prior_conditions=()):
  seq = 8
  t = np.zeros(seq, np.int32)
  t[:length] = tokens
  prior = np.zeros(C, np.int32)
  prior[list(prior_conditions)] = 1
  seg = (np.arange(seq) < length).astype(np.int32)
  return {"tokens": t, "age": np.where(seg > 0, 60.0, 0.0).astype(np.float32),
          "days": np.arange(seq, dtype=np.float32) * seg, "segment_ids": seg,
          "positions": np.arange(seq, dtype=np.int32) * seg, "length": np.int32(length),
          "prefix_len": np.int32(2), "cond_prior": prior}


def test_append_tokens_and_overflow():
  row = _row([1, 4, 10, 11, 12], 5)
  out = rel.append_tokens(row, [20, 21])
  np.testing.assert_array_equal(out["tokens"], [1, 4, 10, 11, 12, 20, 21, 0])
  assert out["length"] == 7 and out["days"][6] == row["days"][4]
  np.testing.assert_array_equal(out["segment_ids"], [1] * 7 + [0])
  full = _row([1, 4, 10, 11, 12, 13, 14, 15], 8)
  out = rel.append_tokens(full, [20, 21])
  # The prefix stays; the two oldest events make room.
  np.testing.assert_array_equal(out["tokens"], [1, 4, 12, 13, 14, 15, 20, 21])
  np.testing.assert_array_equal(out["days"], [0, 1, 4, 5, 6, 7, 7, 7])


def test_counterfactual_lift_on_a_known_model():
  """P(B) doubles when token 30 (condition A = 0) is in the history; nothing else changes."""
  a, b = 0, 1

  def prob_fn(rows):
    p = np.full((len(rows), C), 0.1)
    for i, r in enumerate(rows):
      if 30 in r["tokens"][:int(r["length"])]:
        p[i, b] = 0.2
    return p

  rows = [_row([1, 4, 10, 11], 4), _row([1, 4, 12], 3), _row([1, 4, 30, 10], 4, [a]),
          _row([1, 4, 13], 3, [b])]
  ml = rel.counterfactual_lift(prob_fn, rows, {a: [30], 2: [31], 3: []})
  # Members without A: 0, 1, 3; at risk of B: 0 and 1.
  np.testing.assert_allclose(ml.lift_CxC[a, b], 2.0)
  np.testing.assert_allclose(ml.delta_CxC[a, b], 0.1)
  assert ml.n_CxC[a, b] == 2 and ml.n_CxC[a, 5] == 3
  np.testing.assert_allclose(ml.lift_CxC[a, 5], 1.0)
  np.testing.assert_allclose(ml.lift_CxC[2, b], 1.0)     # token 31 does nothing
  assert np.all(np.isnan(ml.lift_CxC[3]))                # no tokens: unmeasured
  assert np.isnan(ml.lift_CxC[a, a])


def test_recovery_precision_recall():
  truth = np.zeros((4, 4), bool)
  truth[0, 1] = truth[1, 2] = truth[2, 3] = True
  score = np.full((4, 4), 1.0)
  np.fill_diagonal(score, np.nan)
  score[0, 1], score[1, 2] = 3.0, 2.0   # two true links found
  score[3, 0] = 2.5                     # one false link
  score[2, 3] = np.nan                  # one true link not measured
  r = rel.recovery(score, truth, threshold=1.5)
  assert r["num_predicted"] == 3 and r["true_positives"] == 2
  np.testing.assert_allclose(r["precision"], 2 / 3)
  np.testing.assert_allclose(r["recall"], 2 / 3)
  # Ranking: 3.0 (T), 2.5 (F), 2.0 (T): precision at k=3 is 2/3.
  np.testing.assert_allclose(r["precision_at_k"], 2 / 3)
  np.testing.assert_allclose(r["average_precision"], (1 / 1 + 2 / 3) / 2)


def test_true_links_and_novel_candidates():
  truth = rel.true_link_matrix()
  names = conditions.CONDITION_NAMES
  assert truth[names.index("diabetes_t2"), names.index("ckd")]
  assert not truth[names.index("ckd"), names.index("diabetes_t2")]
  assert truth.sum() > 20 and not truth.diagonal().any()
  # Links from latent-only risk states (smoker, prediabetes) are left out.
  links = [("smoker", "copd", 6.0), ("asthma", "copd", 2.5)]
  t2 = rel.true_link_matrix(links)
  assert t2.sum() == 1
  emp = rel.empirical_lift(np.zeros((5, C)), np.zeros((5, C)))
  emp.n_both_CxC[0, 1] = 50
  emp.lift_CxC[0, 1] = 3.0
  model = np.ones((C, C))
  np.fill_diagonal(model, np.nan)
  model[0, 1], model[2, 3] = 3.0, 2.0
  top = rel.ranked_pairs(model, emp, top=2)
  assert [(p.a, p.b) for p in top] == [(0, 1), (2, 3)]
  novel = rel.novel_candidates(model, emp, min_model_lift=1.5)
  assert [(p.a, p.b) for p in novel] == [(2, 3)]   # (0, 1) is well supported by the data


def test_placebo_reference_cancels_what_any_appended_claim_does():
  """Any appended claim (token 40 or 30) multiplies every P by 1.5; token 30 (A = 0) doubles P(B)
  on top. Against the unedited history every pair of A looks linked; against the placebo only
  (A, B) is, and the bootstrap replicates with unit weights are the point estimate."""
  a, b = 0, 1

  def prob_fn(rows):
    p = np.full((len(rows), C), 0.1)
    for i, r in enumerate(rows):
      toks = r["tokens"][:int(r["length"])]
      if 40 in toks or 30 in toks:
        p[i] *= 1.5
      if 30 in toks:
        p[i, b] *= 2.0
    return p

  rows = [_row([1, 4, 10], 3), _row([1, 4, 12], 3), _row([1, 4, 11, 13], 4)]
  plain = rel.counterfactual_lift(prob_fn, rows, {a: [30]})
  np.testing.assert_allclose(plain.lift_CxC[a, [b, 5]], [3.0, 1.5])
  placebo = rel.counterfactual_lift(prob_fn, rows, {a: [30]}, reference=[40])
  np.testing.assert_allclose(placebo.lift_CxC[a, [b, 5]], [2.0, 1.0])
  reps = rel.model_lift_replicates(placebo, np.ones((2, 3)))
  np.testing.assert_allclose(reps[0], placebo.lift_CxC)
  assert np.isnan(reps[:, a, a]).all()


def test_empirical_lift_replicates_with_unit_weights_equal_the_lift():
  rng = np.random.default_rng(0)
  prior = rng.random((60, C)) < 0.2
  nxt = rng.random((60, C)) < 0.1
  emp = rel.empirical_lift(prior, nxt)
  reps = rel.empirical_lift_replicates(prior, nxt, np.ones((1, 60)))
  np.testing.assert_allclose(reps[0], emp.lift_CxC)


def test_effect_size_correlation_with_true_hazard_ratios():
  hr = rel.hazard_ratio_matrix()
  names = conditions.CONDITION_NAMES
  assert hr[names.index("diabetes_t2"), names.index("ckd")] == 2.6
  assert np.isfinite(hr).sum() == rel.true_link_matrix().sum()
  r = rel.effect_size_correlation(hr ** 0.5, hr)          # a monotone transform: rho = 1
  np.testing.assert_allclose(r["spearman"], 1.0)
  assert r["n"] == np.isfinite(hr).sum()
  assert np.isnan(rel.effect_size_correlation(np.full((C, C), np.nan), hr)["spearman"])


def test_case_edit_codes_condition_a_alone_on_two_days(tiny_data_dir):
  vocab = Vocabulary.load(os.path.join(tiny_data_dir, "vocab.json"))
  for c in range(C):
    claim = rel.condition_tokens(vocab, c, "claim")
    if not claim:
      continue
    dx = claim[-1]
    assert vocab.token_conditions[dx, c] > 0
    assert vocab.token_conditions[dx].sum() == vocab.token_conditions[dx, c] or not any(
        vocab.token_conditions[i].sum() == vocab.token_conditions[i, c]
        for i in np.flatnonzero(vocab.token_conditions[:, c] > 0))
    case = rel.condition_tokens(vocab, c, "case")
    gap = len(claim)
    assert case[:gap] == claim and case[gap + 1:] == claim
    assert vocab.kinds[case[gap]] == TokenKind.TIME and vocab.tokens[case[gap]] == "TIME//1-7d"
  placebo = rel.placebo_tokens(vocab, "claim")
  assert placebo and vocab.token_conditions[placebo[-1]].sum() == 0


def test_specificity_adjust_removes_row_and_column_effects():
  rng = np.random.default_rng(0)
  c = 6
  row_C, col_C = rng.normal(0, 1, c), rng.normal(0, 1, c)
  log_L = row_C[:, None] + col_C[None, :]
  np.fill_diagonal(log_L, np.nan)
  lift = np.exp(log_L)
  # Purely additive effects on the log scale: nothing pair-specific is left.
  np.testing.assert_allclose(rel.specificity_adjust(lift, "double")[~np.eye(c, dtype=bool)],
                             1.0, atol=0.25)
  # A strong row (A raises every B) hides the one specific link from the raw ranking only.
  lift = np.full((c, c), 1.1)
  lift[0] = 3.0
  lift[2, 4] = 1.8
  np.fill_diagonal(lift, np.nan)
  assert np.nanargmax(lift) // c == 0
  for how in ("row", "double"):
    adj = rel.specificity_adjust(lift, how)
    assert np.unravel_index(np.nanargmax(adj), adj.shape) == (2, 4)
    assert np.isnan(np.diag(adj)).all()
  np.testing.assert_allclose(rel.specificity_adjust(lift, "none"), lift)
  # Replicates keep their leading axis and are adjusted one matrix at a time.
  reps = np.stack([lift, lift * 2.0])
  out = rel.specificity_adjust(reps, "row")
  assert out.shape == reps.shape
  np.testing.assert_allclose(out[0], out[1])
  with pytest.raises(ValueError, match="adjustment"):
    rel.specificity_adjust(lift, "median")
