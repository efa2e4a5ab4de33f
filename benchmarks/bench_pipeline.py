"""Throughput of the grain input pipeline: batches/s and tokens/s, unpacked and packed timelines.

  python benchmarks/bench_pipeline.py                         # hand-made records in a temp dir
  python benchmarks/bench_pipeline.py --data_dir=OUT --split=train   # records of build_dataset

Hand-made records: --num_records timelines whose lengths are log-normal (median ~200 tokens, long
tail past the context), written with records.ShardWriter into --shards shards. "tokens/s" counts
real (non-padding) tokens delivered; "fill" is the fraction of batch cells that hold them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmm_jax.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from lmm_jax.data import records  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATA_DIR = flags.DEFINE_string("data_dir", None, "records directory; default: hand-made records")
_SPLIT = flags.DEFINE_string("split", "train", "split to read")
_NUM_RECORDS = flags.DEFINE_integer("num_records", 4000, "hand-made records to write")
_SHARDS = flags.DEFINE_integer("shards", 4, "hand-made shards")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 512, "context length")
_BATCH = flags.DEFINE_integer("batch_size", 32, "batch size")
_BATCHES = flags.DEFINE_integer("num_batches", 200, "batches timed per configuration")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "worker_count values to time")


def write_records(data_dir: str, num_records: int, num_shards: int, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)
  per_shard = -(-num_records // num_shards)
  sid = 0
  for shard in range(num_shards):
    path = os.path.join(data_dir, records.TIMELINE,
                        records.shard_name("train", shard, num_shards))
    with records.ShardWriter(path) as w:
      for _ in range(min(per_shard, num_records - sid)):
        sid += 1
        length = int(np.clip(rng.lognormal(np.log(200), 1.0), 8, 8000))
        tokens = rng.integers(10, 30_000, length).astype(np.int32)
        days = (15_000 + np.cumsum(rng.integers(0, 20, length))).astype(np.int32)
        age = (50 + (days - days[0]) / 365.25).astype(np.float32)
        w.write({"subject_id": np.int64(sid), "tokens": tokens, "days": days, "age": age,
                 "prefix_len": 4})
  records.write_manifest(data_dir, vocab_size=30_000)


def time_config(data_dir: str, split: str, pack: bool, workers: int) -> dict[str, float]:
  ds = pipeline.make_dataset(data_dir, records.TIMELINE, split, seq_len=_SEQ_LEN.value,
                             batch_size=_BATCH.value, seed=0, pack=pack, worker_count=workers,
                             shard_index=0, shard_count=1, prefetch_buffer_size=4)
  it = iter(ds)
  try:
    for _ in range(5):  # warm-up: worker start, first reads
      next(it)
    real = 0
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      batch = next(it)
      real += int((batch["segment_ids"] > 0).sum())
    elapsed = time.perf_counter() - start
  finally:
    it.close()
  cells = _BATCHES.value * _BATCH.value * _SEQ_LEN.value
  return {"batches_per_s": _BATCHES.value / elapsed, "tokens_per_s": real / elapsed,
          "fill": real / cells}


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = _DATA_DIR.value
    if data_dir is None:
      data_dir = tmp
      t = time.perf_counter()
      write_records(tmp, _NUM_RECORDS.value, _SHARDS.value)
      print(f"wrote {_NUM_RECORDS.value} hand-made timelines in {_SHARDS.value} shards "
            f"({time.perf_counter() - t:.1f} s)")
    n = pipeline.num_examples(data_dir, records.TIMELINE, _SPLIT.value)
    print(f"{n} timelines, seq_len={_SEQ_LEN.value}, batch_size={_BATCH.value}, "
          f"{_BATCHES.value} batches timed, {os.cpu_count()} CPUs")
    print(f"{'mode':<9}{'workers':>8}{'batches/s':>12}{'tokens/s':>12}{'fill':>7}")
    for pack in (False, True):
      for workers in (int(w) for w in _WORKERS.value):
        r = time_config(data_dir, _SPLIT.value, pack, workers)
        print(f"{'packed' if pack else 'unpacked':<9}{workers:>8}{r['batches_per_s']:>12.1f}"
              f"{r['tokens_per_s']:>12,.0f}{r['fill']:>7.2f}")


if __name__ == "__main__":
  app.run(main)
