"""What the three importers share: member ids, accounting, errors and the streaming MEDS writer.

An importer streams its input records (NDJSON lines, CSV rows, parquet rows) once and calls
`MEDSWriter.add` for the MEDS rows each record becomes. Inputs are not sorted by member, while
MEDS wants a subject's rows together in one file, so the writer spills rows into `num_shards`
buckets by subject (Arrow IPC files, flushed every `flush_rows` rows) and, in a second pass, reads
one bucket at a time, gives every claim one date (its earliest), sums each claim's cost rows per
measure, sorts and writes `data/<shard>.parquet`. Memory is the flush buffer plus one bucket; the
importers size buckets from the input's bytes (`shards_for`), so it stays flat as input grows.

Member ids become `subject_id`s by a keyed hash (blake2b, 63 bits): deterministic for a key, never
written or logged in the clear. Claim ids are hashed the same way into the `claim_id` column.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import hashlib
import json
import math
import os
import shutil
from typing import Iterable, Iterator, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmm_jax import conventions as conv
from lmm_jax.data import code_systems
from lmm_jax.data import meds_io
from lmm_jax.data import terminology
from lmm_jax.synth import writer as synth_writer

REPORT_FILE = "import_report.json"   # in metadata/, beside dataset.json
COST_PREFIX = conv.COST + conv.SEP
COST_PAID_CODE = "COST//PAID"
_US_PER_DAY = meds_io.US_PER_DAY
_SPILL_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64()), pa.field("time", pa.int64()),
    pa.field("code", pa.string()), pa.field("numeric_value", pa.float32()),
    pa.field("claim_id", pa.int64()), pa.field("seq", pa.int64())])
_EPOCH = datetime.date(1970, 1, 1)


class InputFormatError(ValueError):
  """Malformed input: one line naming the file, the line (or row / entry) and the field."""

  def __init__(self, path: str, message: str, line: Optional[int] = None,
               field: Optional[str] = None, what: str = "line"):
    self.path, self.message, self.line, self.field, self.what = path, message, line, field, what
    where = path + (f", {what} {line}" if line is not None else "") + (
        f", field {field!r}" if field else "")
    super().__init__(f"{where}: {message}")

  def __reduce__(self):
    return type(self), (self.path, self.message, self.line, self.field, self.what), self.__dict__


def hash_id(kind: str, value: str, key: bytes = b"") -> int:
  """A non-negative int64 for an identifier string (keyed blake2b, 63 bits)."""
  digest = hashlib.blake2b(f"{kind}\x00{value}".encode(), digest_size=8, key=key).digest()
  return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def parse_day(value: str, path: str, line: int, field: str, what: str = "line") -> int:
  """'YYYY-MM-DD' or an ISO date-time (any zone; its calendar date) -> days since 1970-01-01."""
  text = value.strip()
  try:
    if len(text) == 4 and text.isdigit():  # a year (Synthea payer_transitions)
      return (datetime.date(int(text), 1, 1) - _EPOCH).days
    if len(text) > 10:
      text = text[:10] if text[10] in "T " else text
    return (datetime.date.fromisoformat(text) - _EPOCH).days
  except ValueError as e:
    raise InputFormatError(path, f"not a date: {value[:40]!r}", line, field, what) from e


def parse_amount(value, path: str, line: int, field: str, what: str = "line") -> Optional[float]:
  """A dollar amount ('' / None -> None); anything else that is not a number is an error."""
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  try:
    amount = float(value.replace("$", "").replace(",", "") if isinstance(value, str) else value)
  except ValueError as e:
    raise InputFormatError(path, f"not an amount: {str(value)[:40]!r}", line, field, what) from e
  if not math.isfinite(amount):
    raise InputFormatError(path, f"not a finite amount: {value!r}", line, field, what)
  return amount


class Accounting:
  """Per input file: records read, converted, and dropped by a named reason."""

  def __init__(self):
    self._read: dict[str, int] = collections.Counter()
    self._converted: dict[str, int] = collections.Counter()
    self._dropped: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    self.notes: collections.Counter = collections.Counter()  # e.g. codings of unknown systems

  def converted(self, source: str) -> None:
    self._read[source] += 1
    self._converted[source] += 1

  def dropped(self, source: str, reason: str) -> None:
    self._read[source] += 1
    self._dropped[source][reason] += 1

  def to_dict(self) -> dict:
    sources = {}
    for s in sorted(self._read):
      dropped = dict(sorted(self._dropped[s].items()))
      if self._read[s] != self._converted[s] + sum(dropped.values()):
        raise AssertionError(f"import accounting of {s} does not add up")
      sources[s] = {"records": self._read[s], "converted": self._converted[s],
                    "dropped": dropped}
    total_dropped = collections.Counter()
    for s in sources.values():
      total_dropped.update(s["dropped"])
    return {"records": sum(self._read.values()), "converted": sum(self._converted.values()),
            "dropped": dict(sorted(total_dropped.items())), "by_file": sources,
            "notes": dict(sorted(self.notes.items()))}


def shards_for(paths: Iterable[str], shard_input_mb: float) -> int:
  """Number of output shards (= spill buckets): one per `shard_input_mb` of input."""
  total = sum(os.path.getsize(p) for p in paths)
  return max(1, math.ceil(total / (shard_input_mb * 2**20)))


@dataclasses.dataclass
class _Bucket:
  subject_id: list = dataclasses.field(default_factory=list)
  time: list = dataclasses.field(default_factory=list)
  code: list = dataclasses.field(default_factory=list)
  value: list = dataclasses.field(default_factory=list)
  claim: list = dataclasses.field(default_factory=list)
  seq: list = dataclasses.field(default_factory=list)


class MEDSWriter:
  """Streams MEDS rows into per-subject buckets, then writes the sorted MEDS dataset."""

  def __init__(self, output_dir: str, num_shards: int, *, id_key: bytes = b"",
               flush_rows: int = 50_000):
    if num_shards < 1:
      raise ValueError(f"num_shards must be positive, got {num_shards}")
    self.output_dir, self.num_shards, self.id_key = output_dir, num_shards, id_key
    self._flush_rows = flush_rows
    for sub in ("data", "metadata", ".spill"):
      path = os.path.join(output_dir, sub)
      if os.path.isdir(path):
        shutil.rmtree(path)
      os.makedirs(path)
    self._spill_dir = os.path.join(output_dir, ".spill")
    self._buckets = [_Bucket() for _ in range(num_shards)]
    self._writers: list[Optional[pa.ipc.RecordBatchFileWriter]] = [None] * num_shards
    self._pending = 0
    self._seq = 0
    self.codes: set[str] = set()
    self.descriptions: dict[str, str] = {}

  def __enter__(self) -> "MEDSWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    """On an error, closes and removes the spill (data/ stays empty: no partial dataset)."""
    if exc_type is not None:
      for w in self._writers:
        if w is not None:
          w.close()
      shutil.rmtree(self._spill_dir, ignore_errors=True)

  def subject(self, member_key: str) -> int:
    return hash_id("member", member_key, self.id_key)

  def claim(self, claim_key: str) -> int:
    return hash_id("claim", claim_key, self.id_key)

  def add(self, subject_id: int, day: Optional[int], code: str, value: Optional[float] = None,
          claim_id: Optional[int] = None) -> None:
    """One MEDS row; `day` None for a static fact (sex)."""
    b = self._buckets[subject_id % self.num_shards]
    b.subject_id.append(subject_id)
    b.time.append(None if day is None else day * _US_PER_DAY)
    b.code.append(code)
    b.value.append(value)
    b.claim.append(claim_id)
    b.seq.append(self._seq)
    self._seq += 1
    self.codes.add(code)
    self._pending += 1
    if self._pending >= self._flush_rows:
      self._flush()

  def add_member(self, subject_id: int, birth: Optional[int], sex: Optional[str],
                 death: Optional[int]) -> Optional[str]:
    """Birth, sex (static) and death rows; 'no_member_facts' (a drop reason) when all are None."""
    if birth is None and sex is None and death is None:
      return "no_member_facts"
    if birth is not None:
      self.add(subject_id, birth, conv.BIRTH_CODE)
    if sex:
      self.add(subject_id, None, sex)
    if death is not None:
      self.add(subject_id, death, conv.DEATH_CODE)
    return None

  def describe(self, code: str, description: str) -> None:
    """A description for codes.parquet (the first one seen for a code is kept)."""
    if description:
      self.descriptions.setdefault(code, description)

  def _flush(self) -> None:
    for i, b in enumerate(self._buckets):
      if not b.seq:
        continue
      batch = pa.record_batch([
          pa.array(b.subject_id, pa.int64()), pa.array(b.time, pa.int64()),
          pa.array(b.code, pa.string()), pa.array(b.value, pa.float32()),
          pa.array(b.claim, pa.int64()), pa.array(b.seq, pa.int64())], schema=_SPILL_SCHEMA)
      if self._writers[i] is None:
        self._writers[i] = pa.ipc.new_file(os.path.join(self._spill_dir, f"{i}.arrow"),
                                           _SPILL_SCHEMA)
      self._writers[i].write_batch(batch)
      self._buckets[i] = _Bucket()
    self._pending = 0

  def finish(self, dataset: Mapping, accounting: Accounting) -> dict:
    """Writes data/ and metadata/ (dataset.json, codes.parquet, the report); returns the report."""
    self._flush()
    for w in self._writers:
      if w is not None:
        w.close()
    rows = subjects = 0
    for i in range(self.num_shards):
      path = os.path.join(self._spill_dir, f"{i}.arrow")
      if not os.path.exists(path):
        continue
      with pa.memory_map(path) as source:
        table = pa.ipc.open_file(source).read_all()
      out = _finalize_bucket(table)
      os.remove(path)
      pq.write_table(out, os.path.join(self.output_dir, "data", f"{i}.parquet"),
                     compression="zstd")
      rows += out.num_rows
      subjects += len(pc.unique(out.column("subject_id")))
    shutil.rmtree(self._spill_dir)
    pq.write_table(code_metadata(self.codes, self.descriptions),
                   os.path.join(self.output_dir, "metadata", "codes.parquet"))
    meta = {"dataset_name": dataset["dataset_name"], "dataset_version": dataset.get(
                "dataset_version", "unversioned"),
            "etl_name": dataset["etl_name"], "etl_version": dataset.get("etl_version", "1.0.0"),
            "meds_version": synth_writer.MEDS_VERSION,
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "source": dataset["source"], "raw_source_id_columns": ["claim_id"]}
    with open(os.path.join(self.output_dir, "metadata", "dataset.json"), "w") as f:
      json.dump(meta, f, indent=2)
    report = {"source": dataset["source"], **accounting.to_dict(), "rows_written": rows,
              "subjects_written": subjects, "shards": self.num_shards}
    with open(os.path.join(self.output_dir, "metadata", REPORT_FILE), "w") as f:
      json.dump(report, f, indent=2)
    return report


def _finalize_bucket(t: pa.Table) -> pa.Table:
  """One date per claim (its earliest row), one cost row per claim and measure, no repeated
  rows, sorted."""
  claimed = t.filter(pc.is_valid(t.column("claim_id")))
  first = claimed.group_by(["subject_id", "claim_id"]).aggregate([("time", "min")])
  t = t.join(first, ["subject_id", "claim_id"], join_type="left outer")
  t = t.set_column(t.schema.get_field_index("time"), "time",
                   pc.coalesce(t.column("time_min"), t.column("time"))).drop(["time_min"])
  is_cost = pc.starts_with(t.column("code"), COST_PREFIX)
  cost = t.filter(pc.and_(is_cost, pc.is_valid(t.column("claim_id"))))
  summed = cost.group_by(["subject_id", "claim_id", "code", "time"]).aggregate(
      [("numeric_value", "sum"), ("seq", "max")]).rename_columns(
          {"numeric_value_sum": "numeric_value", "seq_max": "seq"})
  # Other rows repeated within a claim (a place of service on header and line, a diagnosis in
  # two tables) or for a member (a repeated Patient record) are kept once, at their first place.
  rest = t.filter(pc.invert(pc.and_(is_cost, pc.is_valid(t.column("claim_id"))))).group_by(
      ["subject_id", "time", "code", "numeric_value", "claim_id"], use_threads=False).aggregate(
          [("seq", "min")]).rename_columns({"seq_min": "seq"})
  t = pa.concat_tables([rest.select(_SPILL_SCHEMA.names),
                        summed.select(_SPILL_SCHEMA.names).cast(_SPILL_SCHEMA)])
  time_key = pc.fill_null(t.column("time"), np.iinfo(np.int64).min)
  claim_key = pc.fill_null(t.column("claim_id"), -1)
  idx = pc.sort_indices(pa.table({"s": t.column("subject_id"), "t": time_key, "c": claim_key,
                                  "q": t.column("seq")}),
                        sort_keys=[("s", "ascending"), ("t", "ascending"), ("c", "ascending"),
                                   ("q", "ascending")])
  t = t.take(idx)
  return pa.Table.from_arrays([
      t.column("subject_id"), t.column("time").cast(pa.timestamp("us")), t.column("code"),
      pc.round(t.column("numeric_value"), 2).cast(pa.float32()), t.column("claim_id")],
      schema=meds_io.CLAIMS_SCHEMA)


def code_metadata(used: Iterable[str], descriptions: Mapping[str, str]) -> pa.Table:
  """codes.parquet: our conventions' descriptions, the source's, ICD-10-CM parents."""
  codes, descs, parents = [], [], []
  for code in sorted(used):
    system, _, value = code.partition(conv.SEP)
    desc, parent = descriptions.get(code), []
    if system == conv.ICD10CM:
      valid = terminology.icd10cm_valid(value)
      if valid:
        desc = desc or terminology.icd10cm_description(valid)
        ancestors = terminology.icd10cm_ancestors(valid)
        parent = [f"{conv.ICD10CM}{conv.SEP}{ancestors[0]}"] if ancestors else []
    elif system == conv.POS:
      desc = desc or (f"Place of service: {conv.PLACES_OF_SERVICE[value]}"
                      if value in conv.PLACES_OF_SERVICE else None)
    elif system == conv.CLAIM:
      desc = f"Claim type: {value.lower().replace('_', ' ')}"
    elif code == conv.COST_ALLOWED_CODE:
      desc = "Allowed amount of the claim in US dollars (numeric_value)"
    elif code == COST_PAID_CODE:
      desc = "Amount the plan paid on the claim in US dollars (numeric_value)"
    elif system == conv.ENROLLMENT:
      boundary, _, lob = value.partition(conv.SEP)
      desc = f"{'Start' if boundary == 'START' else 'End'} of {lob.lower()} coverage"
    elif code in (conv.BIRTH_CODE, conv.DEATH_CODE):
      desc = "Birth" if code == conv.BIRTH_CODE else "Death"
    codes.append(code)
    descs.append(desc)
    parents.append(parent)
  return pa.table({"code": pa.array(codes, pa.string()),
                   "description": pa.array(descs, pa.string()),
                   "parent_codes": pa.array(parents, pa.list_(pa.string()))})


def sex_code(value: str) -> Optional[str]:
  """'female' / 'F' / '2' / 'male' / 'M' / '1' ... -> GENDER//F or GENDER//M; None when unknown."""
  sex = code_systems.sex_of(value)
  return None if sex == "UNKNOWN" else f"{conv.GENDER}{conv.SEP}{sex}"


def procedure_code(value: str) -> Optional[str]:
  """A CPT (5 digits, or 4 digits + F/T/U) or HCPCS level II (letter + 4 digits) code."""
  v = value.strip().upper()
  if len(v) != 5:
    return None
  if v.isdigit() or (v[:4].isdigit() and v[4] in "FTU"):
    return f"{conv.CPT}{conv.SEP}{v}"
  if v[0].isalpha() and v[1:].isdigit():
    return f"{conv.HCPCS}{conv.SEP}{v}"
  return None


def iter_table(path: str, fmt: str, columns: Iterable[str], batch_rows: int = 8192
               ) -> Iterator[tuple[int, dict]]:
  """Streams (line or row number, {column: value}) from a CSV (with header) or parquet file.

  `columns` must all exist (an error names the file and the column). CSV values are strings
  (empty for missing); parquet values keep their types (None for missing). CSV numbers are
  file lines (the header is line 1); parquet numbers are rows (from 1).
  """
  columns = [c for c in columns if c]
  if fmt == "csv":
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      header = reader.fieldnames or []
      for c in columns:
        if c not in header:
          raise InputFormatError(path, f"no such column (it has {len(header)} columns)",
                                 field=c)
      for row in reader:
        if None in row:  # more fields than the header
          raise InputFormatError(path, "more fields than the header", reader.line_num)
        yield reader.line_num, row
  elif fmt == "parquet":
    try:
      pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as e:
      raise InputFormatError(path, f"unreadable parquet file: {e}") from e
    names = pf.schema_arrow.names
    for c in columns:
      if c not in names:
        raise InputFormatError(path, f"no such column (it has {len(names)} columns)", field=c)
    n = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
      for row in batch.to_pylist():
        n += 1
        yield n, row
  else:
    raise ValueError(f"unknown table format {fmt!r}; known: csv, parquet")


def text(value) -> str:
  """A cell as stripped text ('' for missing)."""
  if value is None:
    return ""
  if isinstance(value, float) and value.is_integer():
    value = int(value)  # a numeric code column read from parquet
  return str(value).strip()


def cell_day(value, path: str, line: int, field: str, what: str = "line") -> Optional[int]:
  """A date cell (string, date or timestamp) -> days since 1970, None when empty."""
  if value is None or value == "":
    return None
  if isinstance(value, datetime.datetime):
    value = value.date()
  if isinstance(value, datetime.date):
    return (value - _EPOCH).days
  return parse_day(str(value), path, line, field, what)


def read_id_key(path: str) -> bytes:
  """The member-id hashing key from a file (at most 64 bytes: blake2b's key size); b'' for ''."""
  if not path:
    return b""
  with open(path, "rb") as f:
    key = f.read().strip()
  if not key or len(key) > 64:
    raise ValueError(f"{path}: an id key file must hold 1 to 64 bytes, it holds {len(key)}")
  return key


def summary(report: Mapping, output_dir: str) -> str:
  """What a binary prints: counts only (no member ids, no codes)."""
  dropped = {k: v for k, v in report["dropped"].items() if v}
  return (f"records {report['records']:,}  converted {report['converted']:,}  dropped "
          f"{sum(dropped.values()):,} {dropped or ''}\n"
          f"wrote {report['rows_written']:,} MEDS rows of {report['subjects_written']:,} subjects "
          f"in {report['shards']} shards to {output_dir} (report: metadata/{REPORT_FILE})")
