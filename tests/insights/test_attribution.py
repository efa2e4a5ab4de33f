"""Attribution sanity: completeness, zero for events that cannot matter, occlusion, events."""

import numpy as np
import pytest

from lmm_jax.conventions import TokenKind
from lmm_jax.insights import attribution
from lmm_jax.insights import loading
from tests.insights import helpers


@pytest.fixture(scope="module")
def predictor():
  return helpers.tiny_predictor()


def _batch(lengths, seed=0):
  rng = np.random.default_rng(seed)
  return loading.stack([helpers.make_row(rng, n) for n in lengths])


SELECT = attribution.Output("prob", 0)  # one selected output: one compilation for all IG tests


def test_ig_attributions_sum_to_prediction_difference(predictor):
  batch = _batch([20, 9])
  mask = attribution.history_mask(batch["length"], batch["prefix_len"], helpers.SEQ_LEN)
  ig = attribution.integrated_gradients(predictor, batch, mask, SELECT, steps=32)
  diff = ig.score_B - ig.baseline_score_B
  assert np.all(np.abs(diff) > 1e-4), "the baseline must change the prediction"
  np.testing.assert_allclose(ig.attributions_BxL.sum(-1), diff, rtol=2e-2, atol=1e-5)
  # Positions outside the attributed set (prefix, padding) get exactly 0.
  assert np.all(ig.attributions_BxL[~mask] == 0.0)
  assert np.abs(ig.attributions_BxL[mask]).max() > 1e-5


def test_tokens_after_the_readout_get_zero_attribution(predictor):
  """Garbage tokens in the padding (after the read-out position, other segment) cannot matter."""
  batch = _batch([10, 14], seed=3)
  batch["tokens"][:, 16:] = 7                      # non-PAD tokens, but segment 0 (padding)
  attribute = np.ones_like(batch["tokens"], bool)  # attribute every position, padding included
  attribute[:, :3] = False
  ig = attribution.integrated_gradients(predictor, batch, attribute, SELECT, steps=32)
  pad = np.arange(helpers.SEQ_LEN)[None, :] >= batch["length"][:, None]
  assert np.abs(ig.attributions_BxL[pad]).max() < 1e-7
  assert np.abs(ig.attributions_BxL[~pad & attribute]).max() > 1e-5


def test_occlusion_deletes_each_event(predictor):
  rng = np.random.default_rng(1)
  row = helpers.make_row(rng, 15)
  groups = np.full(helpers.SEQ_LEN, -1, np.int32)
  groups[3:15] = np.repeat(np.arange(4), 3)
  select = attribution.Output("logit", 0)
  effects, full = attribution.occlusion(predictor, row, groups, select, batch_size=4)
  assert effects.shape == (4,)
  # The effect of event 2 equals a direct run on the row without its tokens.
  without = attribution.delete_tokens(row, groups == 2, helpers.SEQ_LEN)
  direct = predictor.score(loading.stack([without]), select)[0]
  np.testing.assert_allclose(effects[2], full - direct, rtol=1e-5, atol=1e-6)
  assert int(without["length"]) == 12 and without["tokens"][12:].sum() == 0


def test_event_groups_follow_claims():
  kinds = np.array([TokenKind.SPECIAL, TokenKind.SPECIAL, TokenKind.SPECIAL,  # pad bos eos
                    TokenKind.DEMOGRAPHIC, TokenKind.TIME, TokenKind.CLAIM, TokenKind.DIAGNOSIS,
                    TokenKind.COST, TokenKind.CLAIM], np.int8)
  systems = ["", "", "", "GENDER", "TIME", "CLAIM", "ICD10CM", "COST", "POS"]
  # BOS, sex | CLAIM dx cost | CLAIM POS dx | TIME CLAIM dx
  tokens = np.array([1, 3, 5, 6, 7, 5, 8, 6, 4, 5, 6, 0, 0])
  g = attribution.event_groups(tokens, kinds, systems, prefix_len=2, length=11, bos_id=1,
                               eos_id=2)
  np.testing.assert_array_equal(g, [-1, -1, 0, 0, 0, 1, 1, 1, 2, 2, 2, -1, -1])
  agg = attribution.aggregate_events(np.arange(13, dtype=np.float32), g)
  np.testing.assert_allclose(agg, [2 + 3 + 4, 5 + 6 + 7, 8 + 9 + 10])
