"""Prediction-time anchors inserted into pretraining timelines (lmm_jax.data.anchors)."""

import itertools
import os

import numpy as np
import pytest

from lmm_jax.data import anchors
from lmm_jax.data import pipeline
from lmm_jax.data import records
from lmm_jax.data import timeline
from lmm_jax.data import tokenizer as tok_lib
from lmm_jax.data import vocab as vocab_lib


@pytest.fixture(scope="module")
def tok(tiny_data_dir):
  return tok_lib.Tokenizer(vocab_lib.Vocabulary.load(os.path.join(tiny_data_dir,
                                                                  records.VOCAB_FILE)))


def _events_only(tokens, tok):
  skip = set(tok.gap_ids.tolist()) | set(tok.age_ids.tolist())
  return [int(t) for t in tokens if int(t) not in skip]


def test_anchored_timeline_starts_with_the_task_history_and_keeps_every_event(tiny_data_dir,
                                                                              tok):
  a = anchors.AnchorTokens.from_tokenizer(tok)
  rng = np.random.default_rng(0)
  checked = 0
  for rec in itertools.islice(records.read_records(tiny_data_dir, records.TIMELINE, "train"),
                              60):
    day = anchors.random_anchor_day(rec, rng)
    if day is None:
      continue
    out = anchors.insert_anchor(rec, day, a)
    hist = timeline.history_at(rec, day, tok)
    k = len(hist["tokens"])
    # What a task record at `day` holds is exactly the anchored timeline's beginning.
    np.testing.assert_array_equal(out["tokens"][:k], hist["tokens"])
    np.testing.assert_array_equal(out["days"][:k], hist["days"])
    np.testing.assert_allclose(out["age"][:k], hist["age"], rtol=1e-6)
    assert int(out["tokens"][k - 1]) in set(tok.age_ids.tolist())   # ends at the AGE token
    # No event is lost or added; only time tokens change around the anchor.
    assert _events_only(out["tokens"], tok) == _events_only(rec["tokens"], tok)
    assert len(out["tokens"]) == len(out["days"]) == len(out["age"])
    assert np.all(np.diff(out["days"][int(rec["prefix_len"]):]) >= 0)
    later = np.asarray(rec["days"])[int(rec["prefix_len"]):]
    e = int(later[later >= day][0])
    if e > day:   # the continuation's first token is the gap from the anchor to the next event
      assert int(out["tokens"][k]) == tok.gap_token(e - day)
    checked += 1
  assert checked >= 20


def test_pipeline_anchors_are_seeded_and_only_for_timelines(tiny_data_dir):
  def batches(rate, seed=0):
    ds = pipeline.make_dataset(tiny_data_dir, records.TIMELINE, "train", seq_len=64,
                               batch_size=4, seed=seed, shard_index=0, shard_count=1,
                               anchor_rate=rate, prefetch_buffer_size=0, num_epochs=1,
                               pack=False)
    return list(itertools.islice(iter(ds), 3))
  plain, anchored, again = batches(0.0), batches(1.0), batches(1.0)
  for x, y in zip(anchored, again):
    np.testing.assert_array_equal(x["tokens"], y["tokens"])
  assert any(not np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(plain, anchored))
  with pytest.raises(ValueError, match="for TIMELINE records"):
    pipeline.make_dataset(tiny_data_dir, records.TASK, "train", seq_len=64, batch_size=4,
                          seed=0, anchor_rate=0.5)
  with pytest.raises(ValueError, match="anchor_rate=1.5"):
    pipeline.make_dataset(tiny_data_dir, records.TIMELINE, "train", seq_len=64, batch_size=4,
                          seed=0, anchor_rate=1.5)
