"""The on-disk record format shared by the dataset builder and every consumer.

`data_prep.build_dataset` writes, under its output directory:
  vocab.json, report.json
  timeline/{split}-{i:05d}-of-{n:05d}.array_record   one record per patient: the whole timeline
  task/{split}-{i:05d}-of-{n:05d}.array_record       one record per patient at its index date:
                                                     the history before it plus the targets after it
A record is a msgpack map; numpy arrays are stored as {"dtype", "shape", "data"} so decoding is a
zero-copy `np.frombuffer`.

Timeline record (pretraining, generation, memorization audit):
  subject_id  int64            never logged; only joins predictions under a run's workdir
  tokens      int32[L]         vocabulary ids, starting with BOS and the demographic prefix
  days        int32[L]         event day of each token, days since 1970-01-01 (prefix: first event)
  age         float32[L]       age in years at each token (-1 where the birth date is unknown)
  prefix_len  int32            leading tokens forming the demographic prefix (BOS, sex, line of
                               business, first age token): kept whole when a history is truncated

Task record (fine-tuning and evaluation): the timeline fields restricted to events strictly before
`index_day` (so nothing after the index date can reach a model input), plus
  index_day   int32            the index date, days since 1970-01-01
  sex         int8             0 unknown, 1 female, 2 male
  lob         int8             line of business at the index date: 0 unknown, then LINES_OF_BUSINESS
  age_at_index float32
  cost_next, cost_next_capped, cost_prior   float32 dollars: allowed amount in [index, index+365d),
                               the same capped at COST_CAP, and in [index-365d, index)
  cond_next   uint8[C]         condition coded in [index, index+365d)  (C = conditions.NUM_CONDITIONS)
  cond_prior  uint8[C]         condition coded at any time before index (prevalent)
  dx_prior    list[str]        dotless ICD-10-CM codes of [index-365d, index), for CMS-HCC baselines
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Iterator, Mapping

import msgpack
import numpy as np

TIMELINE = "timeline"
TASK = "task"
VOCAB_FILE = "vocab.json"
REPORT_FILE = "report.json"

TIMELINE_FIELDS = ("subject_id", "tokens", "days", "age", "prefix_len")
TASK_FIELDS = TIMELINE_FIELDS + ("index_day", "sex", "lob", "age_at_index", "cost_next",
                                 "cost_next_capped", "cost_prior", "cond_next", "cond_prior",
                                 "dx_prior")
SEQUENCE_FIELDS = ("tokens", "days", "age")


def _pack(obj: Any) -> Any:
  if isinstance(obj, np.ndarray):
    return {"__nd__": True, "dtype": obj.dtype.str, "shape": list(obj.shape),
            "data": np.ascontiguousarray(obj).tobytes()}
  if isinstance(obj, np.generic):
    return obj.item()
  raise TypeError(f"cannot encode {type(obj)} in a record")


def _unpack(obj: dict) -> Any:
  if obj.get("__nd__"):
    return np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
  return obj


def encode(record: Mapping[str, Any]) -> bytes:
  return msgpack.packb(dict(record), default=_pack, use_bin_type=True)


def decode(data: bytes) -> dict[str, Any]:
  return msgpack.unpackb(data, object_hook=_unpack, raw=False)


def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}.array_record"


def shard_paths(data_dir: str, kind: str, split: str) -> list[str]:
  """Sorted shard paths of one record kind (TIMELINE or TASK) and split; error if there are none."""
  pattern = os.path.join(data_dir, kind, f"{split}-*-of-*.array_record")
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise FileNotFoundError(f"no {kind} records for split {split!r}: nothing matches {pattern}")
  return paths


@dataclasses.dataclass
class ShardWriter:
  """Writes records to one ArrayRecord shard (a context manager)."""
  path: str
  options: str = "group_size:1"  # random access per record: grain reads single records.

  def __enter__(self) -> "ShardWriter":
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._writer = array_record_module.ArrayRecordWriter(self.path, self.options)
    self.count = 0
    return self

  def write(self, record: Mapping[str, Any]) -> None:
    self._writer.write(encode(record))
    self.count += 1

  def __exit__(self, *exc) -> None:
    self._writer.close()


def read_shard(path: str) -> Iterator[dict[str, Any]]:
  """Every record of one shard, in order (for tools and tests; training reads through grain)."""
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  source = array_record_data_source.ArrayRecordDataSource([path])
  for i in range(len(source)):
    yield decode(source[i])


def read_records(data_dir: str, kind: str, split: str) -> Iterator[dict[str, Any]]:
  for path in shard_paths(data_dir, kind, split):
    yield from read_shard(path)
