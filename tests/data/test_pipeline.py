"""Tests of the grain input pipeline (lmm_jax.data.pipeline) on hand-made and on built records."""

import os

import numpy as np
import pytest

from lmm_jax import conditions
from lmm_jax.data import pipeline
from lmm_jax.data import records

PREFIX = 3
NUM_SHARDS = 2
NUM_RECORDS = 37  # per kind; not a multiple of any batch size used below


def _tokens(sid: int, length: int) -> np.ndarray:
  # The prefix [1, 2, 3], then events that name their subject and position: sid * 1000 + i.
  events = sid * 1000 + np.arange(PREFIX, length, dtype=np.int32)
  return np.concatenate([np.arange(1, PREFIX + 1, dtype=np.int32), events])


def _write(data_dir: str) -> dict[int, dict]:
  rng = np.random.default_rng(0)
  by_sid = {}
  for kind in (records.TIMELINE, records.TASK):
    sid = 0
    for shard in range(NUM_SHARDS):
      path = os.path.join(data_dir, kind, records.shard_name("train", shard, NUM_SHARDS))
      with records.ShardWriter(path) as w:
        for _ in range(NUM_RECORDS // NUM_SHARDS + shard * (NUM_RECORDS % NUM_SHARDS)):
          sid += 1
          length = int(rng.integers(PREFIX + 1, 40))
          start = int(rng.integers(10_000, 20_000))
          rec = {"subject_id": np.int64(sid), "tokens": _tokens(sid, length),
                 "days": (start + np.cumsum(rng.integers(0, 30, length))).astype(np.int32),
                 "age": np.linspace(40, 45, length, dtype=np.float32), "prefix_len": PREFIX}
          if kind == records.TASK:
            rec.update(index_day=30_000, sex=sid % 3, lob=1, age_at_index=45.5,
                       cost_next=float(sid * 10), cost_next_capped=float(sid * 10),
                       cost_prior=float(sid), dx_prior=["E119"],
                       cond_next=(np.arange(conditions.NUM_CONDITIONS) == sid % 22).astype(
                           np.uint8),
                       cond_prior=np.zeros(conditions.NUM_CONDITIONS, np.uint8),
                       prediction_time=30_000 * 86_400_000_000, boolean_value=-1,
                       float_value=float("-inf"))
            by_sid[sid] = rec
          w.write(rec)
  assert sid == NUM_RECORDS
  records.write_manifest(data_dir, vocab_size=(NUM_RECORDS + 1) * 1000)
  return by_sid


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("pipeline"))
  return d, _write(d)


def _make(data_dir, kind=records.TIMELINE, **kw):
  args = dict(seq_len=16, batch_size=4, seed=3, shard_index=0, shard_count=1)
  args.update(kw)
  return pipeline.make_dataset(data_dir, kind, "train", **args)


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _segments(batch):
  """(row, segment id, token array) of every segment in a batch."""
  out = []
  for r in range(batch["tokens"].shape[0]):
    for s in np.unique(batch["segment_ids"][r]):
      if s:
        out.append((r, s, batch["tokens"][r][batch["segment_ids"][r] == s]))
  return out


def test_unpacked_timeline_batch_layout(data):
  data_dir, _ = data
  it = iter(_make(data_dir, prefetch_buffer_size=0))
  for batch in _take(it, 3):
    assert sorted(batch) == sorted(pipeline.SEQUENCE_OUTPUTS)
    assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (4, 16)
    assert batch["segment_ids"].dtype == np.int32 and batch["positions"].dtype == np.int32
    assert batch["age"].dtype == np.float32 and batch["days"].dtype == np.float32
    for r in range(4):
      n = int(batch["segment_ids"][r].sum())
      assert set(np.unique(batch["segment_ids"][r])) <= {0, 1}
      np.testing.assert_array_equal(batch["segment_ids"][r][:n], 1)
      np.testing.assert_array_equal(batch["tokens"][r][n:], pipeline.PAD_ID)
      np.testing.assert_array_equal(batch["positions"][r][:n], np.arange(n))
      np.testing.assert_array_equal(batch["tokens"][r][:PREFIX], [1, 2, 3])
      assert batch["days"][r][0] == 0 and np.all(np.diff(batch["days"][r][:n]) >= 0)


def test_recent_truncation_keeps_prefix_and_latest_events(data):
  data_dir, by_sid = data
  batches = list(_make(data_dir, records.TASK, shuffle=False, num_epochs=1,
                       drop_remainder=False, prefetch_buffer_size=0))
  seen_long = 0
  for batch in batches:
    for r in np.flatnonzero(batch["valid"]):
      rec = by_sid[int(batch["subject_id"][r])]
      full = rec["tokens"]
      n = int(batch["length"][r])
      if len(full) > 16:
        seen_long += 1
        expected = np.concatenate([full[:PREFIX], full[-(16 - PREFIX):]])
        days = np.concatenate([rec["days"][:PREFIX], rec["days"][-(16 - PREFIX):]])
      else:
        expected, days = full, rec["days"]
      assert n == len(expected)
      np.testing.assert_array_equal(batch["tokens"][r][:n], expected)
      np.testing.assert_array_equal(batch["days"][r][:n], (days - days[0]).astype(np.float32))
  assert seen_long > 5


def test_random_window_is_a_seeded_contiguous_window(data):
  data_dir, by_sid = data
  kw = dict(truncation="random_window", shuffle=False, num_epochs=2, prefetch_buffer_size=0,
            batch_size=NUM_RECORDS, drop_remainder=True)
  epochs = list(_make(data_dir, records.TASK, **kw))
  again = list(_make(data_dir, records.TASK, **kw))
  _assert_batches_equal(epochs, again)
  differs = 0
  for r in range(NUM_RECORDS):
    full = by_sid[int(epochs[0]["subject_id"][r])]["tokens"]
    windows = []
    for batch in epochs:
      n = int(batch["length"][r])
      tokens = batch["tokens"][r][:n]
      np.testing.assert_array_equal(tokens[:PREFIX], full[:PREFIX])
      if len(full) > 16:
        start = int(np.flatnonzero(full == tokens[PREFIX])[0])
        np.testing.assert_array_equal(tokens[PREFIX:], full[start:start + 16 - PREFIX])
      windows.append(tokens)
    differs += not np.array_equal(windows[0], windows[1])
  assert differs > 3  # windows are redrawn each epoch


def test_packing_segments_are_whole_truncated_timelines(data):
  data_dir, _ = data
  batches = list(_make(data_dir, pack=True, num_epochs=1, shuffle=True,
                       prefetch_buffer_size=0, drop_remainder=False))
  sids = []
  max_segments = 0
  for batch in batches:
    assert batch["tokens"].shape == (4, 16)
    for r, s, tokens in _segments(batch):
      mask = batch["segment_ids"][r] == s
      np.testing.assert_array_equal(batch["positions"][r][mask], np.arange(mask.sum()))
      assert batch["days"][r][mask][0] == 0
      np.testing.assert_array_equal(tokens[:PREFIX], [1, 2, 3])
      sid = int(tokens[PREFIX]) // 1000 if len(tokens) > PREFIX else None
      assert sid is not None and np.all(tokens[PREFIX:] // 1000 == sid)
      sids.append(sid)
    max_segments = max(max_segments, int(batch["segment_ids"].max()))
    np.testing.assert_array_equal(batch["tokens"][batch["segment_ids"] == 0], 0)
  assert sorted(sids) == list(range(1, NUM_RECORDS + 1))  # every timeline once
  assert max_segments >= 2


@pytest.mark.parametrize("kind,kw", [
    (records.TIMELINE, dict(shuffle=True)),
    (records.TIMELINE, dict(shuffle=True, pack=True)),
    (records.TIMELINE, dict(shuffle=True, pack=True, truncation="random_window")),
    (records.TASK, dict(shuffle=True, prefetch_buffer_size=0)),
])
def test_resume_from_iterator_state_gives_identical_batches(data, kind, kw):
  data_dir, _ = data
  it = iter(_make(data_dir, kind, **kw))
  _take(it, 5)  # crosses an epoch boundary (37 records, batch 4)
  state = it.get_state()
  expected = _take(it, 9)
  fresh = iter(_make(data_dir, kind, **kw))
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 9), expected)


def test_same_seed_same_batches_other_seed_other_order(data):
  data_dir, _ = data
  a = _take(iter(_make(data_dir, seed=1)), 4)
  b = _take(iter(_make(data_dir, seed=1)), 4)
  c = _take(iter(_make(data_dir, seed=2)), 4)
  _assert_batches_equal(a, b)
  assert not all(np.array_equal(x["tokens"], y["tokens"]) for x, y in zip(a, c))


def test_epochs_are_reshuffled_and_complete(data):
  data_dir, _ = data
  batches = list(_make(data_dir, records.TASK, num_epochs=2, batch_size=NUM_RECORDS))
  assert len(batches) == 2
  first, second = (b["subject_id"] for b in batches)
  assert sorted(first) == sorted(second) == list(range(1, NUM_RECORDS + 1))
  assert not np.array_equal(first, second)


def test_max_records_trains_on_a_fixed_first_subset(data):
  data_dir, _ = data
  k = 7
  batches = list(_make(data_dir, records.TASK, num_epochs=2, batch_size=k, max_records=k))
  assert len(batches) == 2
  first, second = (b["subject_id"].tolist() for b in batches)
  # The first k records in shard order (subject ids 1..k here), reshuffled every epoch.
  assert sorted(first) == sorted(second) == list(range(1, k + 1))
  timeline = _take(iter(_make(data_dir, max_records=3, batch_size=3, num_epochs=1)), 1)[0]
  assert sorted(int(row.max()) // 1000 for row in timeline["tokens"]) == [1, 2, 3]
  with pytest.raises(ValueError, match="max_records=-1"):
    _make(data_dir, max_records=-1)


@pytest.mark.parametrize("shard_count", [1, 3])
def test_eval_yields_every_example_exactly_once(data, shard_count):
  data_dir, by_sid = data
  seen, counts = [], []
  for shard_index in range(shard_count):
    batches = list(pipeline.iterate_eval_batches(
        data_dir, records.TASK, "train", seq_len=16, batch_size=5,
        shard_index=shard_index, shard_count=shard_count))
    counts.append(len(batches))
    assert len(batches) == pipeline.num_batches(
        data_dir, records.TASK, "train", batch_size=5, drop_remainder=False,
        shard_count=shard_count)
    for batch in batches:
      assert batch["tokens"].shape == (5, 16) and batch["valid"].shape == (5,)
      pad = batch["valid"] == 0
      np.testing.assert_array_equal(batch["segment_ids"][pad], 0)
      np.testing.assert_array_equal(batch["subject_id"][pad], -1)
      for r in np.flatnonzero(~pad):
        rec = by_sid[int(batch["subject_id"][r])]
        assert batch["cost_next"][r] == np.float32(rec["cost_next"])
        assert batch["sex"][r] == rec["sex"]
        np.testing.assert_array_equal(batch["cond_next"][r], rec["cond_next"])
      seen.extend(batch["subject_id"][~pad].tolist())
  assert sorted(seen) == list(range(1, NUM_RECORDS + 1))
  assert len(set(counts)) == 1  # equal batch counts: no host waits on another


def test_process_slices_are_disjoint_and_equal_length(data):
  data_dir, _ = data
  per_process = [
      [b["subject_id"] for b in _make(data_dir, records.TASK, num_epochs=1, batch_size=3,
                                      shard_index=i, shard_count=2)]
      for i in range(2)]
  assert len(per_process[0]) == len(per_process[1]) == (NUM_RECORDS // 2) // 3
  ids = [set(np.concatenate(p).tolist()) for p in per_process]
  assert not ids[0] & ids[1]


def test_worker_processes_give_the_same_batches(data):
  data_dir, _ = data
  expected = _take(iter(_make(data_dir)), 6)
  it = iter(_make(data_dir, worker_count=2))
  try:
    got = _take(it, 6)
    state = it.get_state()
    after = _take(it, 2)
  finally:
    it.close()
  _assert_batches_equal(got, expected)
  fresh = iter(_make(data_dir, worker_count=2))
  try:
    fresh.set_state(state)
    _assert_batches_equal(_take(fresh, 2), after)
  finally:
    fresh.close()


def test_bad_arguments_fail_clearly(data, tmp_path):
  data_dir, _ = data
  with pytest.raises(ValueError, match="never packed"):
    _make(data_dir, records.TASK, pack=True)
  with pytest.raises(ValueError, match="truncation"):
    _make(data_dir, truncation="oldest")
  with pytest.raises(ValueError, match="kind"):
    _make(data_dir, "timelines")
  with pytest.raises(ValueError, match="shard_index"):
    _make(data_dir, shard_index=2, shard_count=2)
  with pytest.raises(FileNotFoundError, match="held_out"):
    pipeline.make_dataset(data_dir, records.TIMELINE, "held_out", seq_len=8, batch_size=2,
                          seed=0, shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match="demographic prefix"):
    next(iter(_make(data_dir, seq_len=PREFIX, prefetch_buffer_size=0)))


@pytest.mark.parametrize("field,value,message", [
    ("days", np.zeros(3, np.int32), "days has 3 entries"),
    ("prefix_len", None, "prefix_len"),
])
def test_bad_record_names_its_file(tmp_path, field, value, message):
  rec = {"subject_id": np.int64(1), "tokens": _tokens(1, 8), "days": np.arange(8, dtype=np.int32),
         "age": np.zeros(8, np.float32), "prefix_len": PREFIX}
  if value is None:
    del rec[field]
  else:
    rec[field] = value
  path = os.path.join(tmp_path, records.TIMELINE, records.shard_name("train", 0, 1))
  with records.ShardWriter(path) as w:
    w.write(rec)
  records.write_manifest(str(tmp_path), vocab_size=10_000)
  with pytest.raises(ValueError, match=message) as e:
    next(iter(_make(str(tmp_path), batch_size=1, prefetch_buffer_size=0)))
  assert path in str(e.value) and "record 0" in str(e.value)


def test_default_process_slice_comes_from_jax(data):
  data_dir, _ = data
  ds = pipeline.make_dataset(data_dir, records.TASK, "train", seq_len=16, batch_size=4,
                             seed=0, num_epochs=1, shuffle=False, drop_remainder=False,
                             prefetch_buffer_size=0)
  assert sum(int(b["valid"].sum()) for b in ds) == NUM_RECORDS  # one process owns everything


def test_built_records(tiny_data_dir):
  data_dir, seq_len = tiny_data_dir, 64
  for split in ("train", "held_out"):
    by_sid = {int(r["subject_id"]): r for r in records.read_records(data_dir, records.TASK, split)}
    assert pipeline.num_examples(data_dir, records.TASK, split) == len(by_sid) > 0
    ids = []
    for batch in pipeline.iterate_eval_batches(data_dir, records.TASK, split, seq_len=seq_len,
                                               batch_size=16, shard_index=0, shard_count=1):
      for r in np.flatnonzero(batch["valid"]):
        rec = by_sid[int(batch["subject_id"][r])]
        p, full, n = int(rec["prefix_len"]), rec["tokens"], int(batch["length"][r])
        expected = full if len(full) <= seq_len else np.concatenate(
            [full[:p], full[len(full) - (seq_len - p):]])
        np.testing.assert_array_equal(batch["tokens"][r][:n], expected)
        np.testing.assert_array_equal(batch["cond_prior"][r], rec["cond_prior"])
        assert batch["cost_next_capped"][r] == np.float32(rec["cost_next_capped"])
      ids.extend(batch["subject_id"][batch["valid"] == 1].tolist())
    assert sorted(ids) == sorted(by_sid)
  it = iter(pipeline.make_dataset(data_dir, records.TIMELINE, "train", seq_len=seq_len,
                                  batch_size=8, seed=0, pack=True, shard_index=0,
                                  shard_count=1, prefetch_buffer_size=0))
  batch = next(it)
  assert batch["tokens"].shape == (8, seq_len)
  assert (batch["segment_ids"] > 0).mean() > 0.5  # packing fills rows
