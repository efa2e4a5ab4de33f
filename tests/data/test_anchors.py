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


def test_the_next_events_age_token_is_kept_only_when_the_age_changed_since_the_anchor(tok):
  a = anchors.AnchorTokens.from_tokenizer(tok)
  x, y = int(tok.cost_ids[0]), int(tok.cost_ids[1])
  rec = {"tokens": np.asarray([tok.bos_id, tok.sex_ids["F"], tok.age_token(40), x,
                               tok.gap_token(100), tok.age_token(41), y, tok.eos_id], np.int32),
         "days": np.asarray([0, 0, 0, 100, 200, 200, 200, 200], np.int32),
         "age": np.asarray([40.0, 40.0, 40.0, 40.9, 41.17, 41.17, 41.17, 41.17], np.float32),
         "prefix_len": np.int32(3)}
  # Day 150: the anchor already says 41 (birthday between day 100 and 150): no AGE 41 again.
  late = anchors.insert_anchor(rec, 150, a)
  assert late["tokens"].tolist() == [
      tok.bos_id, tok.sex_ids["F"], tok.age_token(40), x, tok.gap_token(50), tok.age_token(41),
      tok.gap_token(50), y, tok.eos_id]
  # Day 110: the anchor says 40, so the event at day 200 still announces 41.
  early = anchors.insert_anchor(rec, 110, a)
  assert early["tokens"].tolist() == [
      tok.bos_id, tok.sex_ids["F"], tok.age_token(40), x, tok.gap_token(10), tok.age_token(40),
      tok.gap_token(90), tok.age_token(41), y, tok.eos_id]
  # On the event day itself: no gap after the anchor.
  same = anchors.insert_anchor(rec, 200, a)
  assert same["tokens"].tolist()[4:] == [tok.gap_token(100), tok.age_token(41), y, tok.eos_id]
  np.testing.assert_array_equal(np.diff(late["days"]) >= 0, True)
