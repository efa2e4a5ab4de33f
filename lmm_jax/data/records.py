"""The on-disk record format shared by the dataset builder and every consumer.

`data_prep.build_dataset` writes, under its output directory:
  vocab.json, report.json
  timeline/{split}-{i:05d}-of-{n:05d}.array_record   one record per patient: the whole timeline
  task/{split}-{i:05d}-of-{n:05d}.array_record       one record per patient at its index date:
                                                     the history before it plus the targets after it
A record is a msgpack map; numpy arrays are stored as {"dtype", "shape", "data"} so decoding is a
zero-copy `np.frombuffer`.

Fields (declared below and in `labels.py`; `schema(kind)` lists them, `make_record` builds one):
  timeline record (pretraining, generation, memorization audit): TIMELINE_SCHEMA, one record per
    patient: subject_id, the per-token sequences tokens / days / age, prefix_len.
  task record (fine-tuning and evaluation): the timeline fields restricted to events strictly
    before `index_day` (so nothing after the index date can reach a model input), index_day, then
    the covariates (known at the index date) and targets (the year after it) of every label
    registered in `labels.py`.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Iterator, Mapping

from array_record.python import array_record_data_source
from array_record.python import array_record_module
import msgpack
import numpy as np

from lmm_jax.data import labels
from lmm_jax.data.fields import Field, FieldKind

TIMELINE = "timeline"
TASK = "task"
VOCAB_FILE = "vocab.json"
REPORT_FILE = "report.json"

TIMELINE_SCHEMA = (
    Field("subject_id", FieldKind.META, "int64", batch_dtype="int64", batch_pad=-1,
          doc="never logged; only joins predictions under a run's workdir"),
    Field("tokens", FieldKind.SEQUENCE, "int32", (None,), batch_dtype="int32",
          doc="vocabulary ids, starting with BOS and the demographic prefix"),
    Field("days", FieldKind.SEQUENCE, "int32", (None,), batch_dtype="float32", batch_offset=True,
          doc="event day of each token, days since 1970-01-01 (prefix: first event)"),
    Field("age", FieldKind.SEQUENCE, "float32", (None,), batch_dtype="float32",
          doc="age in years at each token (-1 where the birth date is unknown)"),
    Field("prefix_len", FieldKind.META, "int32",
          doc="leading tokens forming the demographic prefix (BOS, sex, line of business, first "
              "age token): kept whole when a history is truncated"),
)
INDEX_DAY = Field("index_day", FieldKind.META, "int32",
                  doc="the index date, days since 1970-01-01")
TIMELINE_FIELDS = tuple(f.name for f in TIMELINE_SCHEMA)
SEQUENCE_FIELDS = tuple(f.name for f in TIMELINE_SCHEMA if f.kind == FieldKind.SEQUENCE)


def schema(kind: str) -> tuple[Field, ...]:
  """The fields of a record kind, in record order (TASK: with the labels registered now)."""
  if kind == TIMELINE:
    return TIMELINE_SCHEMA
  if kind == TASK:
    out = TIMELINE_SCHEMA + (INDEX_DAY,) + labels.fields()
    names = [f.name for f in out]
    if len(set(names)) != len(names):
      raise ValueError(f"task record fields are not unique: {names}")
    return out
  raise ValueError(f"kind={kind!r}: expected {TIMELINE!r} or {TASK!r}")


def field_names(kind: str) -> tuple[str, ...]:
  return tuple(f.name for f in schema(kind))


def make_record(kind: str, values: Mapping[str, Any]) -> dict[str, Any]:
  """The record of `kind`: exactly its schema's fields, in order, cast to their dtypes."""
  fields = schema(kind)
  if values.keys() != {f.name for f in fields}:
    names = [f.name for f in fields]
    raise ValueError(f"a {kind} record needs fields {names}: missing "
                     f"{[n for n in names if n not in values]}, unknown "
                     f"{sorted(set(values) - set(names))}")
  return {f.name: f.encode(values[f.name]) for f in fields}


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
  source = array_record_data_source.ArrayRecordDataSource([path])
  for i in range(len(source)):
    yield decode(source[i])


def read_records(data_dir: str, kind: str, split: str) -> Iterator[dict[str, Any]]:
  for path in shard_paths(data_dir, kind, split):
    yield from read_shard(path)
