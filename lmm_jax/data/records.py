"""The on-disk record format shared by the dataset builder and every consumer.

`data_prep.build_dataset` writes, under its output directory:
  vocab.json, report.json
  manifest.json                                      written last: the vocabulary digest and size,
                                                     the report digest, every shard with its record
                                                     count and size, the builder version and config
                                                     digest (`write_manifest`, `check_dataset`)
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
import hashlib
import json
import os
from typing import Any, Iterator, Mapping, Optional

from array_record.python import array_record_data_source
from array_record.python import array_record_module
import msgpack
import numpy as np

from lmm_jax.data import labels
from lmm_jax.data import meds_tasks  # pylint: disable=unused-import (registers the MEDS label)
from lmm_jax.data.fields import Field, FieldKind

TIMELINE = "timeline"
TASK = "task"
VOCAB_FILE = "vocab.json"
REPORT_FILE = "report.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
KINDS = (TIMELINE, TASK)
REBUILD_HINT = "rebuild it with python -m data_prep.build_dataset --meds_dir=... --output_dir="

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


SHARD_SUFFIX = ".array_record"


def shard_name(split: str, index: int, num_shards: int) -> str:
  """SPLIT-IIIII-of-NNNNN.array_record (Beam's default shard names, so its sink's shards read
  the same); readers take the split from the part before the first '-'."""
  return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


# ---------------------------------------------------------------------------------------------
# The manifest: what a complete build holds. Readers check it before reading anything.


class DatasetMismatchError(ValueError):
  """A data directory's files do not match its manifest (a partial, mixed or edited build)."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, mtime_ns, size) -> sha256


def file_digest(path: str) -> Optional[str]:
  """sha256 of a file (cached per path, mtime and size); None when it does not exist."""
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return None
  key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
  if key not in _DIGESTS:
    _DIGESTS[key] = _sha256(path)
  return _DIGESTS[key]


def vocab_digest(data_dir: str) -> Optional[str]:
  """sha256 of the dataset's vocab.json (identical vocabularies, identical token ids); None when
  there is none (tasks that bring their own vocabulary)."""
  return file_digest(os.path.join(data_dir, VOCAB_FILE)) if data_dir else None


def _shards_on_disk(data_dir: str, kind: str) -> list[str]:
  return sorted(os.path.basename(p) for p in glob.glob(os.path.join(data_dir, kind,
                                                                    "*" + SHARD_SUFFIX)))


def _split_of(name: str) -> str:
  return name.split("-", 1)[0]


def write_manifest(data_dir: str, *, vocab_size: int,
                   builder: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """Writes DATA_DIR/manifest.json describing the files there now (call it last); returns it.

  vocab_size: the number of token ids records may hold (the pipeline refuses larger ones).
  builder: what built the records (the builder's version and config digest).
  """
  shards: dict[str, dict[str, list[dict[str, Any]]]] = {}
  for kind in KINDS:
    for name in _shards_on_disk(data_dir, kind):
      path = os.path.join(data_dir, kind, name)
      source = array_record_data_source.ArrayRecordDataSource([path])
      shards.setdefault(kind, {}).setdefault(_split_of(name), []).append(
          {"file": name, "records": len(source), "bytes": os.path.getsize(path)})
  manifest = {
      "format": MANIFEST_FORMAT,
      "vocab_size": int(vocab_size),
      "vocab_digest": vocab_digest(data_dir),
      "report_digest": file_digest(os.path.join(data_dir, REPORT_FILE)),
      "builder": dict(builder or {}),
      "records": {kind: {split: sum(s["records"] for s in lst) for split, lst in by.items()}
                  for kind, by in shards.items()},
      "shards": shards,
  }
  tmp = os.path.join(data_dir, f".{MANIFEST_FILE}.tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.write("\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, os.path.join(data_dir, MANIFEST_FILE))
  return manifest


def check_dataset(data_dir: str) -> dict[str, Any]:
  """DATA_DIR's manifest, after checking that the files there are the ones it lists.

  Checked on every call (cheap: two cached digests and a stat per shard): the vocabulary and
  report digests, the set of shard files and each one's size. Raises FileNotFoundError when there
  is no manifest and DatasetMismatchError when a file differs, in one sentence saying to rebuild.
  """
  data_dir = os.path.abspath(data_dir)
  path = os.path.join(data_dir, MANIFEST_FILE)
  rebuild = f"{REBUILD_HINT}{data_dir}"
  if not os.path.exists(path):
    what = ("does not exist" if not os.path.isdir(data_dir) else
            f"has no {MANIFEST_FILE}, so it is not a complete dataset build (an interrupted or "
            "pre-manifest build)")
    raise FileNotFoundError(f"{data_dir} {what}; {rebuild}")
  try:
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise DatasetMismatchError(f"{path} is unreadable ({e}); {rebuild}") from e
  if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
    raise DatasetMismatchError(f"{path} is not a format-{MANIFEST_FORMAT} manifest; {rebuild}")

  def refuse(what: str):
    raise DatasetMismatchError(f"{data_dir} does not match its {MANIFEST_FILE} ({what}); "
                               f"{rebuild}")

  for name, key in ((VOCAB_FILE, "vocab_digest"), (REPORT_FILE, "report_digest")):
    digest = file_digest(os.path.join(data_dir, name))
    if digest != manifest.get(key):
      refuse(f"{name} is missing" if digest is None else
             f"{name} is not the one it lists" if manifest.get(key) else
             f"{name} is not listed")
  listed = manifest.get("shards", {})
  for kind in KINDS:
    want = {s["file"]: s for lst in listed.get(kind, {}).values() for s in lst}
    have = set(_shards_on_disk(data_dir, kind))
    if have != set(want):
      extra, missing = sorted(have - set(want)), sorted(set(want) - have)
      refuse(f"{kind}/ has {len(extra)} unlisted shard(s) {extra[:3]} and lacks "
             f"{len(missing)} listed one(s) {missing[:3]}")
    for name, s in want.items():
      size = os.path.getsize(os.path.join(data_dir, kind, name))
      if size != s["bytes"]:
        refuse(f"{kind}/{name} has {size} bytes, the manifest lists {s['bytes']}")
  return manifest


def expected_records(manifest: Mapping[str, Any], kind: str, split: str) -> int:
  """The number of records of one kind and split the manifest lists."""
  return int(manifest.get("records", {}).get(kind, {}).get(split, 0))


def check_record_count(data_dir: str, manifest: Mapping[str, Any], kind: str, split: str,
                       found: int) -> None:
  """Refuses a split whose shards hold another number of records than its manifest lists."""
  want = expected_records(manifest, kind, split)
  if found != want:
    raise DatasetMismatchError(
        f"{os.path.abspath(data_dir)} does not match its {MANIFEST_FILE} ({kind}/{split} holds "
        f"{found} records, the manifest lists {want}); {REBUILD_HINT}{os.path.abspath(data_dir)}")


def shard_paths(data_dir: str, kind: str, split: str) -> list[str]:
  """Sorted shard paths of one record kind (TIMELINE or TASK) and split, as its manifest lists
  them (`check_dataset` first); error if there are none."""
  manifest = check_dataset(data_dir)
  names = sorted(s["file"] for s in manifest["shards"].get(kind, {}).get(split, []))
  if not names:
    raise FileNotFoundError(f"no {kind} records for split {split!r} in {data_dir} (its "
                            f"{MANIFEST_FILE} lists none)")
  return [os.path.join(data_dir, kind, n) for n in names]


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
  """Every record of one kind and split of a complete build (its manifest checked at the call,
  not at the first record)."""
  paths = shard_paths(data_dir, kind, split)
  source = array_record_data_source.ArrayRecordDataSource(paths)
  check_record_count(data_dir, check_dataset(data_dir), kind, split, len(source))
  return (decode(source[i]) for i in range(len(source)))
