"""Reading and validating a MEDS dataset, one data shard at a time, in chunks of whole subjects.

A MEDS dataset is a directory with `data/**/*.parquet` (columns `subject_id` int64, `time`
timestamp (null for static facts), `code` string, `numeric_value` float32 (nullable), optional
`text_value` string (nullable; read when the file has it), any extra columns) and optional
`metadata/` (`dataset.json`, `codes.parquet`, `subject_splits.parquet`). We accept any integer
`subject_id`, a timestamp of any unit or time zone, a date, or an ISO-8601 string `time` (values
that do not parse are counted, not fatal), a string / large string / dictionary `code`, and any
numeric `numeric_value`. Anything else is malformed input: `MEDSFormatError` names the file and
the column. A subject's rows must be contiguous in its file (MEDS sorts a file by subject and
time), so `iter_shard` can read a file of any size in bounded chunks.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lmm_jax import conventions

REQUIRED_COLUMNS = ("subject_id", "time", "code", "numeric_value")
TEXT_COLUMN = "text_value"   # optional MEDS column (null where a row has no text)
# The MEDS data schema of our claims convention (writers: the synthesizer, synthetic patients):
# the four MEDS columns plus the extra column grouping the lines of one claim.
CLAIMS_SCHEMA = pa.schema([
    pa.field("subject_id", pa.int64(), nullable=False),
    pa.field("time", pa.timestamp("us")),
    pa.field("code", pa.string(), nullable=False),
    pa.field("numeric_value", pa.float32()),
    pa.field("claim_id", pa.int64()),
])
US_PER_DAY = 86_400_000_000
NULL_TIME = np.iinfo(np.int64).min
_READ_BUFFER = 8 << 20
_TIME_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M",
                 "%Y-%m-%d")


class MEDSFormatError(ValueError):
  """Malformed MEDS input; the message names the file and, where it applies, the column."""

  def __init__(self, path: str, message: str, column: Optional[str] = None):
    self.path, self.message, self.column = path, message, column
    where = f"{path}" + (f", column {column!r}" if column else "")
    super().__init__(f"{where}: {message}")

  def __reduce__(self):
    # pickle rebuilds an exception as cls(*self.args), and args is the one formatted string; a
    # worker process's error would then fail to arrive in the parent.
    return type(self), (self.path, self.message, self.column), self.__dict__


def data_files(meds_dir: str) -> list[str]:
  """Sorted `data/**/*.parquet` paths; an error when there are none."""
  data_dir = os.path.join(meds_dir, "data")
  if not os.path.isdir(data_dir):
    raise MEDSFormatError(meds_dir, "not a MEDS dataset: it has no data/ directory")
  paths = sorted(glob.glob(os.path.join(data_dir, "**", "*.parquet"), recursive=True))
  if not paths:
    raise MEDSFormatError(data_dir, "no *.parquet files under data/")
  return paths


def dataset_metadata(meds_dir: str) -> dict:
  path = os.path.join(meds_dir, "metadata", "dataset.json")
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise MEDSFormatError(path, f"unreadable dataset.json: {e}") from e


@dataclasses.dataclass
class Splits:
  """subject_id -> split index into conventions.SPLITS (sorted arrays; -1 = not listed)."""
  subject_ids: np.ndarray   # int64[S], sorted
  split_index: np.ndarray   # int8[S]

  def lookup(self, subject_ids: np.ndarray) -> np.ndarray:
    if self.subject_ids.size == 0:
      return np.full(subject_ids.shape, -1, np.int8)
    pos = np.clip(np.searchsorted(self.subject_ids, subject_ids), 0, self.subject_ids.size - 1)
    found = self.subject_ids[pos] == subject_ids
    return np.where(found, self.split_index[pos], -1).astype(np.int8)


def read_splits(meds_dir: str) -> Optional[Splits]:
  """metadata/subject_splits.parquet, or None when absent. Unknown split names are -2."""
  path = os.path.join(meds_dir, "metadata", "subject_splits.parquet")
  if not os.path.exists(path):
    return None
  table = read_table(path)
  for col in ("subject_id", "split"):
    if col not in table.column_names:
      raise MEDSFormatError(path, "required column is missing", col)
  if not pa.types.is_integer(table.schema.field("subject_id").type):
    raise MEDSFormatError(path, f"must be an integer, got {table.schema.field('subject_id').type}",
                          "subject_id")
  ids = table.column("subject_id").cast(pa.int64()).to_numpy(zero_copy_only=False)
  names = table.column("split").cast(pa.string()).to_pylist()
  lookup = {s: i for i, s in enumerate(conventions.SPLITS)}
  index = np.array([lookup.get(n, -2) for n in names], np.int8)
  order = np.argsort(ids, kind="stable")
  ids, index = ids[order], index[order]
  if ids.size > 1 and np.any(ids[1:] == ids[:-1]):
    raise MEDSFormatError(path, "a subject_id is listed more than once", "subject_id")
  return Splits(ids, index)


def directory_split(meds_dir: str, path: str) -> Optional[str]:
  """The split a data file's directory names (`data/train/x.parquet` -> 'train'), else None."""
  parts = os.path.relpath(path, os.path.join(meds_dir, "data")).split(os.sep)
  return parts[0] if len(parts) > 1 and parts[0] in conventions.SPLITS else None


def split_directory_conflicts(meds_dir: str, paths: list[str], splits: Optional[Splits]
                              ) -> dict[str, int]:
  """Subjects that subject_splits.parquet puts in another split than the `data/<split>/` directory
  of their file, as {"train->held_out": subjects, ...}; the metadata's split is the one used.
  Reads only the subject_id column, in batches."""
  if splits is None:
    return {}
  out: dict[str, int] = {}
  for path in paths:
    where = directory_split(meds_dir, path)
    if where is None:
      continue
    pf = _open(path)
    ids = [np.unique(b.column(0).cast(pa.int64()).to_numpy(zero_copy_only=False))
           for b in pf.iter_batches(batch_size=1 << 20, columns=["subject_id"])]
    ids = np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
    listed = splits.lookup(ids)
    for index, n in zip(*np.unique(listed[listed >= 0], return_counts=True)):
      if conventions.SPLITS[index] != where:
        key = f"{where}->{conventions.SPLITS[index]}"
        out[key] = out.get(key, 0) + int(n)
  return dict(sorted(out.items()))


def hash_split(subject_ids: np.ndarray, fractions) -> np.ndarray:
  """Deterministic split index per subject from a 64-bit mix of its id (splitmix64)."""
  x = subject_ids.astype(np.uint64)
  with np.errstate(over="ignore"):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
  u = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
  cum = np.cumsum(np.asarray(fractions, np.float64))
  cum = cum / cum[-1]
  return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1).astype(np.int8)


def mix64(*arrays: np.ndarray) -> np.ndarray:
  """A 64-bit hash of int64 columns (for data-determined random keys)."""
  h = np.full(arrays[0].shape, 0x243F6A8885A308D3, np.uint64)
  with np.errstate(over="ignore"):
    for a in arrays:
      h = (h ^ a.astype(np.uint64)) * np.uint64(0x100000001B3)
      h = h ^ (h >> np.uint64(29))
      h = h * np.uint64(0xBF58476D1CE4E5B9)
      h = h ^ (h >> np.uint64(32))
  return h


@dataclasses.dataclass
class ShardRows:
  """One data file as numpy columns (row order of the file)."""
  path: str
  num_rows: int
  subject_id: np.ndarray    # int64[N]
  time_us: np.ndarray       # int64[N] microseconds since the epoch; NULL_TIME where null/bad
  time_null: np.ndarray     # bool[N] time is null
  time_bad: np.ndarray      # bool[N] time present but unparseable
  codes: list[str]          # distinct code strings
  code_index: np.ndarray    # int32[N] into codes
  value: np.ndarray         # float32[N] numeric_value, NaN where null
  claim: np.ndarray         # int64[N] claim id index within the file, -1 where absent/null
  duplicate: np.ndarray     # bool[N] exact duplicate (all columns) of an earlier row
  texts: list[str]          # distinct text_value strings (stripped, non-empty)
  text_index: np.ndarray    # int32[N] into texts; -1 where null, empty or the column is absent

  @property
  def day(self) -> np.ndarray:
    return np.where(self.time_us == NULL_TIME, NULL_TIME, np.floor_divide(self.time_us, US_PER_DAY))


def _open(path: str) -> pq.ParquetFile:
  try:
    # Column chunks streamed in buffer_size pieces, not read whole: memory does not grow with the
    # size of a row group.
    return pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER)
  except (OSError, pa.ArrowException) as e:
    raise MEDSFormatError(path, f"unreadable parquet file: {e}") from e


def _check_schema(path: str, schema: pa.Schema) -> None:
  """The required columns and their types, from the file's schema (before reading any row)."""
  names = schema.names
  for col in REQUIRED_COLUMNS:
    if col not in names:
      raise MEDSFormatError(path, f"required MEDS column is missing (columns: {names})", col)
  sid = schema.field("subject_id").type
  if not pa.types.is_integer(sid):
    raise MEDSFormatError(path, f"must be an integer (int64), got {sid}", "subject_id")
  t = schema.field("time").type
  t = t.value_type if pa.types.is_dictionary(t) else t
  if not (pa.types.is_null(t) or pa.types.is_timestamp(t) or pa.types.is_date(t) or
          pa.types.is_string(t) or pa.types.is_large_string(t)):
    raise MEDSFormatError(path, f"must be a timestamp (or date / ISO-8601 string), got {t}", "time")
  code = schema.field("code").type
  ct = code.value_type if pa.types.is_dictionary(code) else code
  if not (pa.types.is_string(ct) or pa.types.is_large_string(ct)):
    raise MEDSFormatError(path, f"must be a string, got {code}", "code")
  nv = schema.field("numeric_value").type
  if not (pa.types.is_floating(nv) or pa.types.is_integer(nv) or pa.types.is_null(nv) or
          pa.types.is_decimal(nv)):
    raise MEDSFormatError(path, f"must be a number (float32), got {nv}", "numeric_value")
  if TEXT_COLUMN in names:
    tv = schema.field(TEXT_COLUMN).type
    tt = tv.value_type if pa.types.is_dictionary(tv) else tv
    if not (pa.types.is_string(tt) or pa.types.is_large_string(tt) or pa.types.is_null(tt)):
      raise MEDSFormatError(path, f"must be a string (nullable), got {tv}", TEXT_COLUMN)


def _time_column(path: str, col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  t = col.type
  if pa.types.is_dictionary(t):
    col, t = col.cast(t.value_type), t.value_type
  if pa.types.is_null(t):
    n = len(col)
    return np.full(n, NULL_TIME, np.int64), np.ones(n, bool), np.zeros(n, bool)
  null = col.is_null().to_numpy(zero_copy_only=False)
  bad = np.zeros(len(col), bool)
  if pa.types.is_timestamp(t):
    ts = col.cast(pa.timestamp(t.unit, t.tz)).cast(pa.timestamp(t.unit))
    ts = ts.cast(pa.timestamp("us"), safe=False) if t.unit != "us" else ts
  elif pa.types.is_date(t):
    ts = col.cast(pa.timestamp("us"))
  elif pa.types.is_string(t) or pa.types.is_large_string(t):
    strings = col.cast(pa.string())
    ts = None
    for fmt in _TIME_FORMATS:
      parsed = pc.strptime(pc.utf8_slice_codeunits(strings, 0, _fmt_len(fmt)), format=fmt,
                           unit="us", error_is_null=True)
      ts = parsed if ts is None else pc.coalesce(ts, parsed)
    bad = ts.is_null().to_numpy(zero_copy_only=False) & ~null
  else:
    raise MEDSFormatError(path, f"must be a timestamp (or date / ISO-8601 string), got {t}", "time")
  us = ts.cast(pa.int64()).fill_null(NULL_TIME).to_numpy(zero_copy_only=False).astype(np.int64)
  us[null | bad] = NULL_TIME
  return us, null, bad


def _fmt_len(fmt: str) -> int:
  return len(fmt.replace("%Y", "YYYY").replace("%m", "MM").replace("%d", "DD").replace(
      "%H", "HH").replace("%M", "MM").replace("%S", "SS"))


def _encode(col: pa.ChunkedArray) -> np.ndarray:
  """Column -> int64 ids equal exactly where values are equal (nulls -> -1)."""
  try:
    enc = pc.dictionary_encode(col.combine_chunks() if col.num_chunks != 1 else col.chunk(0))
    return enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
  except (pa.ArrowException, TypeError):
    ids: dict = {}
    return np.array([ids.setdefault(repr(v), len(ids)) for v in col.to_pylist()], np.int64)


class _FileDictionary:
  """Dictionary-encodes one column over a file's chunks exactly as encoding the whole column at
  once does: ids in the order of first appearance in the file, nulls -1.

  Holds the file's distinct values (integers: sorted numpy arrays of values and ids, 16 bytes per
  value; other types: one arrow array): claim ids keep the ids, hence the claim order within a
  timestamp and the cost sample's hash keys, of a whole-file read.
  """

  def __init__(self):
    self._count = 0
    self._sorted: Optional[np.ndarray] = None    # integer columns: distinct values, sorted
    self._sorted_ids = np.zeros(0, np.int64)     # and their ids
    self._values: Optional[pa.Array] = None      # other columns: distinct values by id
    self._fallback: dict = {}                    # values arrow cannot hash, by repr

  def encode(self, col: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_dictionary(col.type):
      col = col.cast(col.type.value_type)   # each chunk has its own dictionary
    try:
      enc = pc.dictionary_encode(col.combine_chunks() if col.num_chunks != 1 else col.chunk(0))
    except (pa.ArrowException, TypeError):
      ids = self._fallback
      return np.array([ids.setdefault(repr(v), len(ids)) for v in col.to_pylist()], np.int64)
    local = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    if len(enc.dictionary) == 0:   # only nulls
      return local
    if pa.types.is_integer(col.type):
      to_file = self._ids_of_integers(enc.dictionary.to_numpy(zero_copy_only=False))
    else:
      to_file = self._ids_of_values(enc.dictionary)
    return np.where(local >= 0, to_file[np.maximum(local, 0)], -1)

  def _new_ids(self, new: np.ndarray) -> np.ndarray:
    ids = self._count + np.arange(int(new.sum()), dtype=np.int64)
    self._count += ids.size
    return ids

  def _ids_of_integers(self, values: np.ndarray) -> np.ndarray:
    if self._sorted is None:
      self._sorted = np.zeros(0, values.dtype)
    pos = np.searchsorted(self._sorted, values)
    found = pos < self._sorted.size
    found[found] = self._sorted[pos[found]] == values[found]
    ids = np.empty(values.size, np.int64)
    ids[found] = self._sorted_ids[pos[found]]
    new = ~found
    ids[new] = self._new_ids(new)
    order = np.argsort(values[new], kind="stable")
    add, add_ids = values[new][order], ids[new][order]
    at = np.searchsorted(self._sorted, add)
    self._sorted = np.insert(self._sorted, at, add)
    self._sorted_ids = np.insert(self._sorted_ids, at, add_ids)
    return ids

  def _ids_of_values(self, values: pa.Array) -> np.ndarray:
    if self._values is None:
      self._values = values.slice(0, 0)
    ids = pc.index_in(values, value_set=self._values).fill_null(-1).to_numpy(
        zero_copy_only=False).astype(np.int64)
    new = ids < 0
    ids[new] = self._new_ids(new)
    if new.any():
      self._values = pa.concat_arrays([self._values, values.filter(pa.array(new))])
    return ids


def _null_count(pf: pq.ParquetFile, column: str) -> int:
  return sum(b.column(0).null_count for b in pf.iter_batches(columns=[column]))


def _shard_rows(path: str, pf: pq.ParquetFile, table: pa.Table, claim_id_column: str,
                claims: Optional[_FileDictionary]) -> ShardRows:
  """One chunk of a data file (already schema-checked) as numpy columns."""
  names = table.column_names
  n = table.num_rows
  sid = table.column("subject_id")
  if sid.null_count:
    raise MEDSFormatError(path, f"{_null_count(pf, 'subject_id')} null subject ids", "subject_id")
  subject = _subject_ids(path, sid)
  time_us, time_null, time_bad = _time_column(path, table.column("time"))

  code = table.column("code")
  if code.null_count:
    raise MEDSFormatError(path, f"{_null_count(pf, 'code')} null codes", "code")
  enc = pc.dictionary_encode(code.cast(pa.string()).combine_chunks())
  codes = enc.dictionary.to_pylist()
  code_index = enc.indices.to_numpy(zero_copy_only=False).astype(np.int32)

  nv = table.column("numeric_value")
  value = nv.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False).astype(np.float32)

  claim = (claims.encode(table.column(claim_id_column)) if claims is not None
           else np.full(n, -1, np.int64))
  texts, text_index = _text_column(table)

  # Duplicates are rows equal in every column, subject included: found within a chunk of whole
  # subjects as in the whole file.
  keys = [subject, time_us, time_bad.astype(np.int64), code_index.astype(np.int64),
          np.where(np.isnan(value), np.int64(-1) << 40, value.view(np.int32).astype(np.int64))]
  keys += [_encode(table.column(c)) for c in names
           if c not in ("subject_id", "time", "code", "numeric_value")]
  duplicate = np.zeros(n, bool)
  if n > 1:
    order = np.lexsort(keys[::-1])
    same = np.ones(n - 1, bool)
    for k in keys:
      ks = k[order]
      same &= ks[1:] == ks[:-1]
    duplicate[order[1:][same]] = True
  return ShardRows(path, n, subject, time_us, time_null, time_bad, codes, code_index, value,
                   claim, duplicate, texts, text_index)


def _text_column(table: pa.Table) -> tuple[list[str], np.ndarray]:
  """text_value as (distinct stripped strings, int32 index; -1 where null, blank or absent)."""
  n = table.num_rows
  if TEXT_COLUMN not in table.column_names:
    return [], np.full(n, -1, np.int32)
  col = table.column(TEXT_COLUMN)
  if pa.types.is_dictionary(col.type):
    col = col.cast(col.type.value_type)
  if pa.types.is_null(col.type) or col.null_count == n:
    return [], np.full(n, -1, np.int32)
  stripped = pc.utf8_trim_whitespace(col.cast(pa.string()))
  stripped = pc.if_else(pc.equal(stripped, ""), pa.scalar(None, pa.string()), stripped)
  enc = pc.dictionary_encode(stripped.combine_chunks() if isinstance(stripped, pa.ChunkedArray)
                             else stripped)
  return (enc.dictionary.to_pylist(),
          enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32))


def _subject_ids(path: str, sid: pa.ChunkedArray) -> np.ndarray:
  """subject_id as int64; an unsigned id above the int64 range is an error naming it."""
  if pa.types.is_unsigned_integer(sid.type):
    top = pc.max(sid).as_py()
    if top is not None and top > np.iinfo(np.int64).max:
      raise MEDSFormatError(path, f"subject id {top} does not fit in int64 (MEDS subject ids are "
                            "int64)", "subject_id")
  return sid.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)


def _check_contiguous(path: str, subject: np.ndarray, first_row: int, seen: np.ndarray
                      ) -> np.ndarray:
  """Error unless every subject of a chunk has one run of rows there and none in an earlier
  chunk (`seen`: their sorted ids); returns seen with this chunk's subjects."""
  starts = np.flatnonzero(np.r_[True, subject[1:] != subject[:-1]]) if subject.size else \
      np.zeros(0, np.int64)
  run_ids = subject[starts]
  order = np.argsort(run_ids, kind="stable")
  again = order[1:][run_ids[order][1:] == run_ids[order][:-1]]
  before = np.flatnonzero(np.isin(run_ids, seen))
  bad = np.concatenate([again, before])
  if bad.size:
    row = first_row + int(starts[bad.min()])
    raise MEDSFormatError(
        path, f"the rows of a subject are not contiguous (row {row} continues a subject whose "
        "rows stopped earlier); MEDS keeps each subject's rows together in one file, sorted by "
        "time", "subject_id")
  return np.union1d(seen, run_ids)


def iter_shard(path: str, claim_id_column: str = "claim_id", max_rows: Optional[int] = None
               ) -> Iterator[ShardRows]:
  """Reads and validates one data file in chunks of whole subjects.

  A chunk holds about `max_rows` rows (record batches of that size, cut at the last subject
  boundary; one subject with more rows is read whole); None reads the file at once. Memory is
  bounded by the chunk, plus the file's distinct claim ids and 8 bytes per subject. A subject's
  rows must be contiguous (MEDS); whatever the chunking, the rows, their order and the claim ids
  are those of a whole-file read. Yields at least one (possibly empty) chunk.
  """
  pf = _open(path)
  schema = pf.schema_arrow
  _check_schema(path, schema)
  claims = _FileDictionary() if claim_id_column in schema.names else None
  seen = np.zeros(0, np.int64)
  first_row = 0
  yielded = False

  def chunk(tables: list[pa.Table]) -> ShardRows:
    nonlocal seen, first_row, yielded
    table = pa.concat_tables(tables) if len(tables) != 1 else tables[0]
    rows = _shard_rows(path, pf, table, claim_id_column, claims)
    seen = _check_contiguous(path, rows.subject_id, first_row, seen)
    first_row += rows.num_rows
    yielded = True
    return rows

  if max_rows is None:
    yield chunk([_read(path, pf.read)])
    return
  pending: list[pa.Table] = []   # the rows of the last subject read, which may go on
  pending_id = None
  batches = pf.iter_batches(batch_size=max(1, int(max_rows)))
  while (batch := _read(path, next, batches, None)) is not None:
    if not batch.num_rows:
      continue
    piece = pa.Table.from_batches([batch])
    sid = piece.column("subject_id")
    if sid.null_count:
      raise MEDSFormatError(path, f"{_null_count(pf, 'subject_id')} null subject ids",
                            "subject_id")
    ids = _subject_ids(path, sid)
    last = int(np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])[-1])
    if last > 0:   # rows [0, last) finish the pending subject and hold only whole subjects
      yield chunk(pending + [piece.slice(0, last)])
      pending = [piece.slice(last)]
    elif pending and ids[0] != pending_id:
      yield chunk(pending)
      pending = [piece]
    else:
      pending.append(piece)
    pending_id = ids[-1]
  if pending or not yielded:
    yield chunk(pending or [schema.empty_table()])


def read_table(path: str) -> pa.Table:
  """A whole (metadata) parquet file; an unreadable one is a MEDSFormatError naming it."""
  return _read(path, pq.read_table, path)


def _read(path: str, fn, *args):
  """fn(*args), a read of the parquet file: its errors name the file."""
  try:
    return fn(*args)
  except (OSError, pa.ArrowException) as e:
    raise MEDSFormatError(path, f"unreadable parquet file: {e}") from e


def read_shard(path: str, claim_id_column: str = "claim_id") -> ShardRows:
  """Reads and validates one whole data file (tools and tests; the builder reads chunks)."""
  return next(iter_shard(path, claim_id_column, None))


def days_to_date(day: int) -> str:
  return str(np.datetime64(int(day), "D"))


def date_to_day(date: str) -> int:
  try:
    return int(np.datetime64(date, "D").astype(np.int64))
  except ValueError as e:
    raise ValueError(f"index_date must be 'auto' or 'YYYY-MM-DD', got {date!r}") from e


def year_start_day(day: int) -> int:
  year = np.datetime64(int(day), "D").astype("datetime64[Y]")
  return int(year.astype("datetime64[D]").astype(np.int64))
