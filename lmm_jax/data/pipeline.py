"""The grain input pipeline over the ArrayRecord shards of `lmm_jax.data.records`.

    ds = make_dataset(data_dir, records.TIMELINE, "train", seq_len=512, batch_size=32, seed=0)
    it = iter(ds)                  # a grain DatasetIterator
    batch = next(it)               # dict of numpy arrays, leading dim batch_size
    state = it.get_state()         # save with the model; it.set_state(state) resumes exactly

Stages (MapDataset, lazy and indexable, then IterDataset):
  ArrayRecord source -> tag each record with its index -> seeded global shuffle (reshuffled per
  epoch) -> [eval: pad each epoch to a multiple of batch_size * shard_count] -> repeat -> decode,
  truncate and pad or trim per example (random windows seeded by seed, epoch and record index) ->
  this process's slice [shard_index::shard_count] -> batch (or first-fit packing, then batch) ->
  prefetch (a thread, or `worker_count` processes).
TASK records with `bucket_lengths` are batched by `_BucketBatches` instead: windows of
`bucket_window` global batches are sorted by length, cut into batches, each trimmed to the smallest
bucket length holding its longest record (train: the window's batch order seeded-shuffled).

Every process sees the same global order and takes every shard_count-th example, so the examples
a step consumes do not depend on how many processes read them, and processes never overlap.

The data directory must be a complete build (`records.check_dataset`: its manifest matches its
files and record counts), and every record's token ids must lie in [0, the manifest's
vocab_size): anything else is refused in one line naming the directory, or the shard and record.

Batches (B = batch_size, L = seq_len):
  tokens int32[B,L] (pad 0), segment_ids int32[B,L] (0 = padding, 1 unpacked, 1..k packed),
  positions int32[B,L] (0-based within a segment), age float32[B,L], days float32[B,L] (days since
  the segment's first token).
  TASK batches add length int32[B] and valid int32[B] (0 on padding rows), plus every task-record
  field that declares a batch_dtype (`records.schema(records.TASK)`): subject_id int64[B] (-1 on
  padding rows), sex, lob int32[B], age_at_index, cost_next, cost_next_capped, cost_prior
  float32[B], cond_next, cond_prior int32[B,C], and any label added in `labels.py`. `dx_prior` is
  not batched (baselines read records).
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
from typing import Any, Iterator

from absl import flags
import grain
import jax
import numpy as np

from lmm_jax.data import anchors as anchors_lib
from lmm_jax.data import records
from lmm_jax.data import tokenizer as tok_lib
from lmm_jax.data import vocab as vocab_lib
from lmm_jax.data.fields import Field, FieldKind

TRUNCATIONS = ("recent", "random_window")
_SEQUENCES = tuple(f for f in records.TIMELINE_SCHEMA if f.kind == FieldKind.SEQUENCE)
_TOKENS = _SEQUENCES[0].name     # the sequence that carries the segment ids when packing
SEQUENCE_OUTPUTS = (_TOKENS, "segment_ids", "positions") + tuple(f.name for f in _SEQUENCES[1:])
PAD_ID = 0

Example = dict[str, np.ndarray]


# ------------------------------------------------------------------------------------------------
# Per-example transforms (module-level functions so worker processes can pickle them).


def keep_indices(n: int, prefix_len: int, seq_len: int, truncation: str,
                 rng: np.random.Generator | None) -> np.ndarray | slice:
  """Which of a history's n tokens fit in seq_len: all, or the prefix plus a window of events.

  'recent' keeps the most recent seq_len - prefix_len events; 'random_window' keeps a contiguous
  window of that many events starting uniformly at random (rng).
  """
  if n <= seq_len:
    return slice(0, n)
  if prefix_len >= seq_len:
    raise ValueError(f"seq_len={seq_len} leaves no room for events after the demographic prefix "
                     f"of {prefix_len} tokens; use a longer seq_len")
  window = seq_len - prefix_len
  if truncation == "recent":
    start = n - window
  elif truncation == "random_window":
    assert rng is not None
    start = int(rng.integers(prefix_len, n - window + 1))
  else:
    raise ValueError(f"truncation={truncation!r}: expected one of {TRUNCATIONS}")
  return np.concatenate([np.arange(prefix_len), np.arange(start, start + window)])


def _tag(index: int, data: bytes, *, num_records: int) -> tuple[int, bytes | None]:
  # Repeat passes epoch * num_records + i; the record's own index is i.
  return index % num_records, data


class _PadEpochs(grain.MapDataset):
  """Pads each epoch of `parent` (length n per epoch) to `length` with (-1, None) markers.

  Indexes past the first epoch keep the parent's epoch numbering so a shuffle beneath still
  reshuffles every epoch.
  """

  def __init__(self, parent: grain.MapDataset, length: int):
    super().__init__(parent)
    self._source = parent
    self._n = len(parent)
    self._length = length

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f"_PadEpochs(n={self._n}, length={self._length})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(index, self._length)
    if i >= self._n:
      return (-1, None)
    return self._source[epoch * self._n + i]


def check_buckets(bucket_lengths: tuple[int, ...] | list[int], seq_len: int) -> tuple[int, ...]:
  """The sorted bucket lengths, seq_len always the last; refuses a bucket outside (0, seq_len]."""
  buckets = sorted({int(b) for b in bucket_lengths})
  bad = [b for b in buckets if not 0 < b <= seq_len]
  if bad:
    raise ValueError(f"bucket_lengths={tuple(bucket_lengths)}: {bad[0]} is outside (0, "
                     f"seq_len={seq_len}]")
  if not buckets or buckets[-1] != seq_len:
    buckets.append(seq_len)
  return tuple(buckets)


def bucket_length(longest: int, buckets: tuple[int, ...]) -> int:
  """The smallest bucket length holding a record of `longest` tokens (buckets sorted)."""
  for b in buckets:
    if longest <= b:
      return b
  return buckets[-1]


class _BucketBatches(grain.MapDataset):
  """Length-bucketed batches of padded TASK examples (one element = this process's batch).

  The global stream (every process's rows, before the process slice) is read in windows of
  `window` global batches of batch_size * shard_count rows. A window is sorted by length (stable),
  cut into global batches, and each batch is trimmed to the smallest bucket length that holds its
  longest record; with `shuffle` the window's batch order is permuted by (seed, window). Process p
  takes rows p::shard_count of every global batch, so all processes agree on each step's shape.
  A pure function of the index: deterministic, and the iterator state (an index) resumes exactly.
  Every record of the parent appears once (evaluation: the epochs are padded to whole batches).
  """

  def __init__(self, parent: grain.MapDataset, *, batch_size: int, shard_index: int,
               shard_count: int, buckets: tuple[int, ...], window: int, seed: int,
               shuffle: bool, drop_remainder: bool):
    super().__init__(parent)
    self._source = parent
    self._rows = batch_size * shard_count
    self._shard_index, self._shard_count = shard_index, shard_count
    self._buckets, self._window = buckets, max(int(window), 1)
    self._seed, self._shuffle = seed, shuffle
    n = len(parent)
    self._len = n // self._rows if drop_remainder or n >= sys.maxsize else -(-n // self._rows)
    self._n = n
    self._lock = threading.Lock()
    self._cache: dict[int, list[Example]] = {}

  def __getstate__(self):
    state = dict(self.__dict__)
    state.pop("_lock")
    state["_cache"] = {}
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self._len

  def __str__(self) -> str:
    return f"_BucketBatches(buckets={self._buckets}, window={self._window})"

  def _window_batches(self, w: int) -> list[Example]:
    first = w * self._window
    count = min(self._window, self._len - first)
    stop = min((first + count) * self._rows, self._n)
    rows = [self._source[i] for i in range(first * self._rows, stop)]
    order = sorted(range(len(rows)), key=lambda i: int(rows[i]["length"]))
    batches = []
    for b in range(count):
      take = [rows[i] for i in order[b * self._rows:(b + 1) * self._rows]]
      length = bucket_length(max(int(r["length"]) for r in take), self._buckets)
      batch = {}
      for k in take[0]:
        x = np.stack([r[k] for r in take])
        if k in SEQUENCE_OUTPUTS:
          x = x[:, :length]
        batch[k] = x[self._shard_index::self._shard_count]
      batches.append(batch)
    if self._shuffle:
      perm = np.random.default_rng([self._seed, w]).permutation(count)
      batches = [batches[i] for i in perm]
    return batches

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    w, j = divmod(index, self._window)
    with self._lock:  # grain's read threads ask for neighbouring batches of one window
      if w not in self._cache:
        if len(self._cache) >= 2:
          self._cache.pop(min(self._cache))
        self._cache[w] = self._window_batches(w)
      return self._cache[w][j]


def task_batch_fields() -> tuple[Field, ...]:
  """The per-example task-record fields batched besides the sequences (see the module doc)."""
  return tuple(f for f in records.schema(records.TASK)
               if f.batch_dtype is not None and f.kind != FieldKind.SEQUENCE)


def _sequence_example(rec: dict[str, Any], seq_len: int, truncation: str,
                      rng: np.random.Generator | None) -> Example:
  """The truncated sequence features of one record, unpadded (tokens, days, age)."""
  n = len(rec[_TOKENS])
  for f in _SEQUENCES[1:]:
    if len(rec[f.name]) != n:
      raise ValueError(f"{f.name} has {len(rec[f.name])} entries but {_TOKENS} has {n}")
  keep = keep_indices(n, int(rec["prefix_len"]), seq_len, truncation, rng)
  ex = {}
  for f in _SEQUENCES:
    x = np.asarray(rec[f.name], f.batch_dtype)[keep]
    if f.batch_offset and len(x):
      x = x - x[0]
    ex[f.name] = x
  return ex


def _pad_sequence(ex: Example, seq_len: int) -> Example:
  n = len(ex[_TOKENS])
  out = {}
  for f in _SEQUENCES:
    buf = np.zeros(seq_len, ex[f.name].dtype)
    buf[:n] = ex[f.name]
    out[f.name] = buf
  out["segment_ids"] = np.zeros(seq_len, np.int32)
  out["segment_ids"][:n] = 1
  out["positions"] = np.zeros(seq_len, np.int32)
  out["positions"][:n] = np.arange(n, dtype=np.int32)
  return out


def _empty_sequence() -> Example:
  return {f.name: np.zeros(0, f.batch_dtype) for f in _SEQUENCES}


def _empty_task_example(seq_len: int, task_fields: tuple[Field, ...]) -> Example:
  ex = _pad_sequence(_empty_sequence(), seq_len)
  ex["length"] = np.int32(0)
  ex["valid"] = np.int32(0)
  for f in task_fields:
    ex[f.name] = f.batch_padding()
  return ex


def _anchor_tokens(data_dir: str) -> anchors_lib.AnchorTokens:
  vocab = vocab_lib.Vocabulary.load(os.path.join(data_dir, records.VOCAB_FILE))
  return anchors_lib.AnchorTokens.from_tokenizer(tok_lib.Tokenizer(vocab))


def _locate(paths: list[str], record_index: int) -> str:
  """'FILE, record i' for a global record index (only computed when reporting an error)."""
  for path in paths:
    n = len(grain.sources.ArrayRecordDataSource([path]))
    if record_index < n:
      return f"{path}, record {record_index}"
    record_index -= n
  return f"record {record_index} past the end of {paths}"


def _check_token_ids(tokens: np.ndarray, vocab_size: int) -> None:
  """Refuses ids outside [0, vocab_size): records from another build than the vocabulary's."""
  if tokens.size and (int(tokens.max()) >= vocab_size or int(tokens.min()) < 0):
    bad = int(tokens.max()) if int(tokens.max()) >= vocab_size else int(tokens.min())
    raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size}) of its "
                     f"{records.MANIFEST_FILE}: the records and vocabulary come from different "
                     f"builds; {records.REBUILD_HINT}...")


def _parse(index: int, tagged: tuple[int, bytes | None], *, kind: str, seq_len: int,
           truncation: str, seed: int, epoch_length: int, pad: bool, paths: list[str],
           task_fields: tuple[Field, ...], vocab_size: int, anchor_rate: float = 0.0,
           anchor: anchors_lib.AnchorTokens | None = None) -> Example:
  """Decodes, truncates and (unless packing) pads one tagged record (TASK: plus task_fields)."""
  record_index, data = tagged
  if data is None:  # an evaluation padding row
    return (_pad_sequence(_empty_sequence(), seq_len) if kind == records.TIMELINE
            else _empty_task_example(seq_len, task_fields))
  rng = None
  epoch = index // epoch_length
  if truncation == "random_window":
    rng = np.random.default_rng([seed, epoch, record_index])
  try:
    rec = records.decode(data)
    _check_token_ids(np.asarray(rec[_TOKENS]), vocab_size)
    if anchor_rate > 0:
      # Its own stream (the 1), so anchors leave the random windows as they were.
      arng = np.random.default_rng([seed, epoch, record_index, 1])
      if arng.random() < anchor_rate:
        day = anchors_lib.random_anchor_day(rec, arng)
        if day is not None:
          rec = anchors_lib.insert_anchor(rec, day, anchor)
    ex = _sequence_example(rec, seq_len, truncation, rng)
    if pad and kind == records.TASK:
      task = {"length": np.int32(min(len(rec[_TOKENS]), seq_len)), "valid": np.int32(1)}
      for f in task_fields:
        task[f.name] = f.batch_value(rec[f.name])
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"bad {kind} record ({_locate(paths, record_index)}): "
                     f"{type(e).__name__}: {e}") from e
  if not pad:
    return ex
  ex = _pad_sequence(ex, seq_len)
  if kind == records.TASK:
    ex.update(task)
  return ex


def _rename_packed(ex: Example) -> Example:
  out = {f.name: ex[f.name] for f in _SEQUENCES}
  out["segment_ids"] = ex[f"{_TOKENS}_segment_ids"]
  out["positions"] = ex[f"{_TOKENS}_positions"]
  return out


class _ClosingOnceIterator(grain.experimental.ThreadPrefetchDatasetIterator):
  """grain's thread-prefetch iterator whose close() is idempotent.

  grain calls close() again from __del__, and at interpreter exit that second call fails on
  already-torn-down module globals ("Exception ignored ..."); an explicit close() first avoids it.
  """

  _closed_once = False   # our own flag (class default: close() may run before __init__ ends)

  def close(self) -> None:
    if self._closed_once:
      return
    self._closed_once = True
    super().close()


class _ThreadPrefetch(grain.IterDataset):
  """Prefetches batches of `parent` in a background thread (worker_count == 0)."""

  def __init__(self, parent: grain.IterDataset, buffer_size: int):
    super().__init__(parent)
    self._source = parent
    self._buffer_size = buffer_size

  def __str__(self) -> str:
    return f"_ThreadPrefetch(buffer_size={self._buffer_size})"

  def __iter__(self) -> grain.DatasetIterator:
    return _ClosingOnceIterator(iter(self._source), self._buffer_size)


def _ensure_absl_flags_parsed() -> None:
  # mp_prefetch reads grain's absl flags in the parent process; libraries and tests may run
  # without absl.app, so mark the flags as parsed (with their defaults) when nobody has.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _batch_process_slice(ds: grain.MapDataset, *, pack: bool, drop_remainder: bool, seq_len: int,
                         batch_size: int, seed: int, shuffle: bool, shard_index: int,
                         shard_count: int, read_threads: int, num_packing_bins: int | None,
                         prefetch_buffer_size: int) -> grain.IterDataset:
  """This process's slice of the parsed examples, packed or not, batched at seq_len."""
  if drop_remainder and len(ds) < sys.maxsize:
    # Finite data: every process gets the same number of examples, hence of batches.
    ds = ds[:len(ds) - len(ds) % shard_count]
  ds = ds[shard_index::shard_count]

  if pack:
    # The reading threads run ahead by a few batches' worth of timelines.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                 prefetch_buffer_size=4 * batch_size))
    it_ds = grain.experimental.FirstFitPackIterDataset(
        it_ds, length_struct={f.name: seq_len for f in _SEQUENCES},
        num_packing_bins=num_packing_bins or batch_size, seed=seed, shuffle_bins=shuffle)
    it_ds = it_ds.map(_rename_packed)
    batch_fn = None if drop_remainder else functools.partial(
        grain.experimental.batch_and_pad, batch_size=batch_size)
    it_ds = it_ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn)
  else:
    # Batching the MapDataset keeps whole batches per worker process and needs no padding logic:
    # in evaluation mode every batch is already full.
    # Here the reading threads' elements are whole batches.
    it_ds = ds.batch(batch_size, drop_remainder=drop_remainder).to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads,
                          prefetch_buffer_size=max(2 * read_threads, prefetch_buffer_size)))
  return it_ds


# ------------------------------------------------------------------------------------------------
# Public API.


def num_examples(data_dir: str, kind: str, split: str) -> int:
  """Number of records of one kind and split (all shards, all processes)."""
  n = len(grain.sources.ArrayRecordDataSource(records.shard_paths(data_dir, kind, split)))
  records.check_record_count(data_dir, records.check_dataset(data_dir), kind, split, n)
  return n


def num_batches(data_dir: str, kind: str, split: str, *, batch_size: int,
                drop_remainder: bool = True, shard_count: int = 1) -> int:
  """Batches one process gets from one unpacked epoch (drop_remainder=False: padded last batch)."""
  n = num_examples(data_dir, kind, split)
  per_process = n // shard_count if drop_remainder else math.ceil(n / shard_count)
  return per_process // batch_size if drop_remainder else math.ceil(per_process / batch_size)


def make_dataset(data_dir: str, kind: str, split: str, *, seq_len: int, batch_size: int,
                 seed: int, shuffle: bool = True, num_epochs: int | None = None,
                 pack: bool = False, drop_remainder: bool = True,
                 shard_index: int | None = None, shard_count: int | None = None,
                 worker_count: int = 0, prefetch_buffer_size: int = 2,
                 truncation: str = "recent", read_threads: int = 2,
                 num_packing_bins: int | None = None,
                 max_records: int = 0, bucket_lengths: tuple[int, ...] = (),
                 bucket_window: int = 16, anchor_rate: float = 0.0) -> grain.IterDataset:
  """The batched dataset of one record kind and split for this process.

  Args:
    data_dir: the builder's output directory (holding timeline/ and task/).
    kind: records.TIMELINE or records.TASK.
    split: "train", "tuning" or "held_out".
    seq_len: L, the context length; longer histories are truncated (see `truncation`).
    batch_size: B, rows per batch of THIS process (the per-host batch).
    seed: seeds the shuffle, packing-bin order and random windows; same seed, same batches.
    shuffle: globally shuffle the records, with a different permutation every epoch.
    num_epochs: passes over the data; None repeats forever.
    pack: first-fit pack several timelines per row (TIMELINE only).
    drop_remainder: True drops the incomplete last batch; False (evaluation) yields every example
      of every epoch exactly once across processes, the last batches padded to full size with
      empty rows (segment_ids 0; for TASK valid 0), and every process gets as many batches.
    shard_index, shard_count: this process's slice; default jax.process_index()/process_count().
    worker_count: >0 runs the per-example work in that many worker processes (mp_prefetch); the
      batches then depend on worker_count when packing, and the iterator should be closed.
    prefetch_buffer_size: batches buffered ahead (per worker process, or by a thread when
      worker_count == 0; 0 disables the thread).
    truncation: 'recent' keeps the demographic prefix and the most recent events; 'random_window'
      keeps the prefix and a random contiguous window of events, drawn from (seed, epoch, record).
    read_threads: threads reading and decoding records in each process.
    num_packing_bins: rows packed at once (default batch_size); more bins waste less padding.
    max_records: > 0 reads only the first max_records records of the split (in shard order: a
      fixed subset, e.g. fewer training patients for a scaling curve); 0 reads them all.
    bucket_lengths: TASK only: each batch is trimmed to the smallest of these lengths (seq_len is
      always one) that holds its longest record, after sorting windows of `bucket_window` global
      batches by length (see `_BucketBatches`); the sequences of a batch are then [B, bucket].
      Empty: every batch is [B, seq_len].
    anchor_rate: TIMELINE only: the share of timelines (drawn per seed, epoch and record) that
      get a prediction-time anchor at a random day (`lmm_jax.data.anchors`), as task histories
      end with; 0: none.
    bucket_window: global batches sorted together; larger windows waste less padding but mix
      fewer lengths per batch (train), and cost memory (the window is held decoded).

  Returns:
    A grain IterDataset; iter() gives a DatasetIterator with get_state()/set_state().
  """
  if kind not in (records.TIMELINE, records.TASK):
    raise ValueError(f"kind={kind!r}: expected {records.TIMELINE!r} or {records.TASK!r}")
  if truncation not in TRUNCATIONS:
    raise ValueError(f"truncation={truncation!r}: expected one of {TRUNCATIONS}")
  if pack and kind == records.TASK:
    raise ValueError("task records are never packed: one example per row (pack=False)")
  if not 0.0 <= anchor_rate <= 1.0:
    raise ValueError(f"anchor_rate={anchor_rate} must be in [0, 1]")
  if anchor_rate and kind != records.TIMELINE:
    raise ValueError(f"anchor_rate={anchor_rate} is for TIMELINE records (task histories "
                     "already end with their anchor)")
  if bucket_lengths and kind != records.TASK:
    raise ValueError(f"bucket_lengths={tuple(bucket_lengths)} is for TASK records; timelines are "
                     "packed or padded to seq_len")
  if seq_len <= 0 or batch_size <= 0:
    raise ValueError(f"seq_len={seq_len} and batch_size={batch_size} must be positive")
  if num_epochs is not None and num_epochs <= 0:
    raise ValueError(f"num_epochs={num_epochs} must be positive or None")
  if shard_index is None or shard_count is None:
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} must be in [0, shard_count={shard_count})")

  paths = records.shard_paths(data_dir, kind, split)
  manifest = records.check_dataset(data_dir)
  source = grain.sources.ArrayRecordDataSource(paths)
  n = len(source)
  records.check_record_count(data_dir, manifest, kind, split, n)
  if n == 0:
    raise ValueError(f"no {kind} records for split {split!r} in {data_dir}")
  if max_records < 0:
    raise ValueError(f"max_records={max_records} must be >= 0 (0: every record)")
  ds = grain.MapDataset.source(source)
  if 0 < max_records < n:
    ds, n = ds[:max_records], max_records
  ds = ds.map_with_index(functools.partial(_tag, num_records=n))
  if shuffle:
    ds = ds.shuffle(seed=seed)
  pad_epochs = not drop_remainder and not pack
  if pad_epochs:
    ds = _PadEpochs(ds, math.ceil(n / (batch_size * shard_count)) * batch_size * shard_count)
  epoch_length = len(ds)
  ds = ds.repeat(num_epochs)  # each epoch reshuffled: the shuffle sees the epoch in the index
  ds = ds.map_with_index(functools.partial(
      _parse, kind=kind, seq_len=seq_len, truncation=truncation, seed=seed,
      epoch_length=epoch_length, pad=not pack, paths=paths,
      task_fields=task_batch_fields() if kind == records.TASK else (),
      vocab_size=int(manifest["vocab_size"]), anchor_rate=anchor_rate,
      anchor=_anchor_tokens(data_dir) if anchor_rate else None))
  if bucket_lengths:
    # Shapes vary per batch, decided on the global stream so every process agrees.
    it_ds = _BucketBatches(
        ds, batch_size=batch_size, shard_index=shard_index, shard_count=shard_count,
        buckets=check_buckets(bucket_lengths, seq_len), window=bucket_window, seed=seed,
        shuffle=shuffle, drop_remainder=drop_remainder).to_iter_dataset(
            grain.ReadOptions(num_threads=read_threads,
                              prefetch_buffer_size=max(2 * read_threads, prefetch_buffer_size)))
  else:
    it_ds = _batch_process_slice(ds, pack=pack, drop_remainder=drop_remainder, seq_len=seq_len,
                                 batch_size=batch_size, seed=seed, shuffle=shuffle,
                                 shard_index=shard_index, shard_count=shard_count,
                                 read_threads=read_threads, num_packing_bins=num_packing_bins,
                                 prefetch_buffer_size=prefetch_buffer_size)

  if worker_count > 0:
    _ensure_absl_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=max(prefetch_buffer_size, 1)))
  elif prefetch_buffer_size > 0:
    it_ds = _ThreadPrefetch(it_ds, prefetch_buffer_size)
  return it_ds


def iterate_eval_batches(data_dir: str, kind: str, split: str, *, seq_len: int, batch_size: int,
                         shard_index: int | None = None, shard_count: int | None = None,
                         bucket_lengths: tuple[int, ...] = (), bucket_window: int = 16,
                         ) -> Iterator[Example]:
  """One pass over a split: every example once, the last batch padded (valid == 0).

  In record order; with bucket_lengths (TASK), in length order within each window of
  bucket_window batches, each batch trimmed to its bucket (so key outputs by subject_id).
  """
  ds = make_dataset(data_dir, kind, split, seq_len=seq_len, batch_size=batch_size, seed=0,
                    shuffle=False, num_epochs=1, pack=False, drop_remainder=False,
                    shard_index=shard_index, shard_count=shard_count, prefetch_buffer_size=0,
                    bucket_lengths=bucket_lengths, bucket_window=bucket_window)
  yield from ds
