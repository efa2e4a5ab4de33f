"""Length-bucketed TASK batches (pipeline.make_dataset(bucket_lengths=...))."""

import numpy as np
import pytest

from lmm_jax.data import pipeline
from lmm_jax.data import records
from tests.data.test_pipeline import NUM_RECORDS, _assert_batches_equal, _take, _write

SEQ = 40            # every hand-made history (4..39 tokens) fits: lengths are exact
BUCKETS = (8, 16, 32)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("buckets"))
  return d, _write(d)


def _make(data_dir, **kw):
  args = dict(seq_len=SEQ, batch_size=4, seed=3, shard_index=0, shard_count=1,
              bucket_lengths=BUCKETS, bucket_window=3)
  args.update(kw)
  return pipeline.make_dataset(data_dir, records.TASK, "train", **args)


def _check_bucket(batch):
  """The batch has the smallest bucket (or SEQ) that holds its longest row, and rows are intact."""
  width = batch["tokens"].shape[1]
  longest = int(batch["length"].max())
  assert width == pipeline.bucket_length(longest, BUCKETS + (SEQ,))
  for k in pipeline.SEQUENCE_OUTPUTS:
    assert batch[k].shape[1] == width, k
  np.testing.assert_array_equal(batch["segment_ids"].sum(1), batch["length"])


def test_train_batches_take_their_bucket_and_vary_in_shape(data):
  data_dir, by_sid = data
  batches = _take(iter(_make(data_dir)), 18)
  for b in batches:
    _check_bucket(b)
    for r, sid in enumerate(b["subject_id"]):
      n = len(by_sid[int(sid)]["tokens"])
      np.testing.assert_array_equal(b["tokens"][r, :n], by_sid[int(sid)]["tokens"])
  widths = {b["tokens"].shape[1] for b in batches}
  assert len(widths) >= 2 and widths <= set(BUCKETS + (SEQ,))
  # Sorting within windows pads less than padding every batch to SEQ.
  padded = sum(b["tokens"].size for b in batches)
  assert padded < 0.8 * len(batches) * 4 * SEQ


def test_bucketed_train_batches_are_seeded_and_resume_exactly(data):
  data_dir, _ = data
  a = _take(iter(_make(data_dir)), 12)
  _assert_batches_equal(a, _take(iter(_make(data_dir)), 12))
  other = _take(iter(_make(data_dir, seed=4)), 12)
  assert not all(np.array_equal(x["subject_id"], y["subject_id"]) for x, y in zip(a, other))
  it = iter(_make(data_dir))
  _take(it, 5)   # mid-window, and past the first epoch (37 records, 9 batches of 4)
  state = it.get_state()
  expected = _take(it, 8)
  fresh = iter(_make(data_dir))
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 8), expected)


def test_an_epoch_of_bucketed_train_batches_drops_only_the_remainder(data):
  data_dir, _ = data
  batches = list(_make(data_dir, num_epochs=1))
  ids = np.concatenate([b["subject_id"] for b in batches])
  assert len(batches) == NUM_RECORDS // 4 and len(set(ids.tolist())) == len(ids)


@pytest.mark.parametrize("shard_count", [1, 3])
def test_bucketed_eval_yields_every_example_once_and_processes_agree_on_shapes(data, shard_count):
  data_dir, by_sid = data
  seen, shapes = [], []
  for shard_index in range(shard_count):
    batches = list(pipeline.iterate_eval_batches(
        data_dir, records.TASK, "train", seq_len=SEQ, batch_size=5, shard_index=shard_index,
        shard_count=shard_count, bucket_lengths=BUCKETS, bucket_window=2))
    assert len(batches) == pipeline.num_batches(
        data_dir, records.TASK, "train", batch_size=5, drop_remainder=False,
        shard_count=shard_count)
    shapes.append([b["tokens"].shape for b in batches])
    for b in batches:
      assert b["tokens"].shape[0] == 5
      pad = b["valid"] == 0
      np.testing.assert_array_equal(b["subject_id"][pad], -1)
      for r in np.flatnonzero(~pad):
        assert b["cost_next"][r] == np.float32(by_sid[int(b["subject_id"][r])]["cost_next"])
      seen.extend(b["subject_id"][~pad].tolist())
  assert sorted(seen) == list(range(1, NUM_RECORDS + 1))
  assert all(s == shapes[0] for s in shapes)   # every process compiles the same shape per step


def test_bucket_arguments_fail_clearly(data):
  data_dir, _ = data
  with pytest.raises(ValueError, match="64 is outside"):
    _make(data_dir, bucket_lengths=(8, 64))
  with pytest.raises(ValueError, match="for TASK records"):
    pipeline.make_dataset(data_dir, records.TIMELINE, "train", seq_len=SEQ, batch_size=4, seed=0,
                          bucket_lengths=BUCKETS)
  assert pipeline.check_buckets((16, 8, 16), SEQ) == (8, 16, SEQ)
