"""MEDS -> vocabulary and ArrayRecord records (`data_prep.build_dataset` is its binary).

Two streaming passes over the input shards, each shard handled independently by a worker process:
  pass 1 reads every shard, cleans it (the same drop rules as pass 2) and, on the train split only,
         counts codes and keeps a bounded sample of per-claim costs (the bottom-k of a data-derived
         hash: a uniform sample that does not depend on the number of workers). The parent builds
         the vocabulary from the merged counts and the cost-bin edges from the sample.
  pass 2 tokenizes every shard and writes one timeline shard and one task shard per input shard
         and split (`records.shard_name(split, i, num_input_shards)`), returning the counts that
         finish the vocabulary (train token counts, mean dollars per cost bin, mean days per gap).
Per shard, the work is: read the file in chunks of whole subjects (`meds_io.iter_shard`, sized by
`memory_budget_mb`), clean each chunk (`clean.clean`), and in pass 2 tokenize each subject's
events (`timeline.tokenize`) and compute its task record's labels (`labels.py`). Peak memory is
one chunk per worker plus the vocabulary, whatever the size of a file. See docs/data.md.

The per-shard work (`shard_counts`, `shard_records`), the merges of its results (`merge_pass1`,
`merge_pass2`: order-free), the vocabulary fit and the report are shared by two drivers, the
`Engine`s: `local_engine` (this machine's worker processes) and `build_beam.beam_engine` (Apache
Beam pipelines, `--engine=beam`).

The output appears whole or not at all: the build holds an exclusive lock (`lock_path`) for its
whole run, writes into a temporary directory beside the output (`.NAME.building-*`, the same file
system), writes `manifest.json` last (`records.write_manifest`) and only then renames the directory
into place, replacing an older build. A killed build leaves the old output (or none) untouched.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Callable, ContextManager, Iterable, Iterator, Optional

import ml_collections
import numpy as np
import tqdm

from lmm_jax import conventions
from lmm_jax import workers as workers_lib
from lmm_jax.data import aces_tasks
from lmm_jax.data import clean as clean_lib
from lmm_jax.data import code_metadata
from lmm_jax.data import code_systems as cs
from lmm_jax.data import events as events_lib
from lmm_jax.data import labels
from lmm_jax.data import meds_io
from lmm_jax.data import meds_tasks
from lmm_jax.data import records
from lmm_jax.data import terminology
from lmm_jax.data import timeline
from lmm_jax.data import tokenizer as tok_lib
from lmm_jax.data import values as values_lib
from lmm_jax.data import vocab as vocab_lib
from lmm_jax.data.code_systems import Role
from lmm_jax.data.meds_io import MEDSFormatError  # pylint: disable=unused-import (re-export)

DROP_REASONS = clean_lib.DROP_REASONS          # re-exported: the report's drop reasons
TASK_EXCLUSIONS = labels.TASK_EXCLUSIONS
# Peak bytes a worker holds per input row of the chunk it works on (read, cleaned, tokenized):
# turns memory_budget_mb into rows per chunk. Measured with benchmarks/bench_build_dataset.py.
BYTES_PER_ROW = 400
# Bumped when the same input and config would give other records: stored in manifest.json.
BUILDER_VERSION = 1
# Entries of a build's output directory; any other entry means it is not ours to replace.
_OUTPUT_ENTRIES = {records.VOCAB_FILE, records.REPORT_FILE, records.MANIFEST_FILE,
                   records.TIMELINE, records.TASK, meds_tasks.LABELS_DIR}
# Tests only: makes the builder kill itself or wait at a chosen moment, e.g. "kill@shards=2" (the
# parent, after 2 shards of pass 2), "kill@records=5" (the process writing pass-2 records, at its
# 5th record: mid-shard), "wait@shards=1:PATH" (touch PATH.reached, wait until PATH exists).
TEST_HOOK_ENV = "LMM_JAX_BUILD_TEST_HOOK"


class BuildLockedError(ValueError):
  """Another build holds the output directory's lock."""


def _hook_spec() -> tuple[str, str, int, str] | None:
  spec = os.environ.get(TEST_HOOK_ENV, "")
  if not spec:
    return None
  action, _, rest = spec.partition("@")
  point, _, arg = rest.partition("=")
  n, _, path = arg.partition(":")
  return action, point, int(n), path


_HOOK = _hook_spec()
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_RECORDS_WRITTEN = 0  # pass-2 records this process has written (for the test hook)


def _test_hook(point: str, count: int) -> None:
  if _HOOK is None or _HOOK[1] != point or _HOOK[2] != count:
    return
  action, path = _HOOK[0], _HOOK[3]
  if action == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
  elif action == "wait":
    with open(f"{path}.reached", "w", encoding="utf-8"):
      pass
    deadline = time.time() + 300
    while not os.path.exists(path) and time.time() < deadline:
      time.sleep(0.05)


def _plain(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(json.dumps(config.to_dict(), default=list))


# ---------------------------------------------------------------------------------------------
# Worker context (module globals so a pool initializer sets them once per process).


@dataclasses.dataclass
class _Context:
  config: dict[str, Any]
  splits: Optional[meds_io.Splits]
  num_shards: int
  output_dir: str = ""
  vocab_path: str = ""
  index_day: int = 0
  data_end_day: int = 0
  labels_dir: str = ""       # label tasks: the MEDS label files (read once per worker)
  code_mapping: Optional[dict[str, str]] = None  # raw code -> parent code (code_metadata)
  value_bins: Optional[values_lib.ValueBins] = None  # numeric values -> bin codes
  text_categories: Optional[values_lib.TextCategories] = None  # text values -> category codes


_CTX: Optional[_Context] = None
_ANALYZER: Optional[tok_lib.CodeAnalyzer] = None
_TOKENIZER: Optional[tok_lib.Tokenizer] = None
_TASK_LABELS: Optional[meds_tasks.TaskLabels] = None


def _die_with_parent() -> None:
  """A worker is killed when the builder dies (Linux): after a kill -9 of the builder no orphan
  keeps writing (forked siblings hold each other's pipe ends, so none would see the parent go)."""
  if not sys.platform.startswith("linux"):
    return
  libc = ctypes.CDLL(None, use_errno=True)
  libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  if os.getppid() == 1:  # the parent died before prctl took effect
    os.kill(os.getpid(), signal.SIGKILL)


def _init_worker(ctx: _Context, in_worker: bool = False) -> None:
  global _CTX, _ANALYZER, _TOKENIZER
  if in_worker:
    _die_with_parent()
  _CTX = ctx
  _ANALYZER = tok_lib.CodeAnalyzer(tok_lib.tokenizer_config(ctx.config))
  _TOKENIZER = None


def worker_setup(ctx: _Context, pass2: bool = False) -> None:
  """Sets this process's worker context for `shard_counts` (pass 1) or, with pass2, for
  `shard_records` (ctx with its splits: another driver's workers get no pool initializer)."""
  _init_worker(ctx)
  if pass2:
    _set_pass2(ctx)


def _set_pass2(ctx: _Context) -> None:
  """Pass-2 fields of the context (the tokenizer, a label task's labels), loaded once per worker
  process."""
  global _CTX, _TOKENIZER, _TASK_LABELS
  if _TOKENIZER is None or _CTX.vocab_path != ctx.vocab_path:
    _TOKENIZER = tok_lib.Tokenizer(vocab_lib.Vocabulary.load(ctx.vocab_path))
  if ctx.labels_dir and (_TASK_LABELS is None or _TASK_LABELS.source != ctx.labels_dir):
    _TASK_LABELS = meds_tasks.read_labels(ctx.labels_dir)
  _CTX = dataclasses.replace(ctx, splits=_CTX.splits)  # the splits came with the initializer


class _Runner:
  """Runs shard jobs in order, in one process pool for both passes (in-process for 1 worker).

  Workers fork from the parent (which has loaded the terminology tables already) unless JAX is
  imported in the parent: forking a process with JAX's threads running can deadlock, so then
  they are spawned. A worker's error, or a worker's death (killed, out of memory), stops the pool
  and is raised here, naming the shard (workers.ProcessPool).
  """

  def __init__(self, ctx: _Context, num_jobs: int):
    self.ctx = ctx
    self.workers = max(1, min(int(ctx.config["num_workers"]), num_jobs))
    self.pool = None
    if self.workers == 1:
      _init_worker(ctx)
    else:
      method = "spawn" if "jax" in sys.modules else "fork"
      self.pool = workers_lib.ProcessPool(self.workers, start_method=method,
                                          initializer=_init_worker, initargs=(ctx, True))

  def map(self, fn, items: list, desc: str) -> Iterable:
    bar = dict(total=len(items), desc=desc, disable=not self.ctx.config["progress"],
               unit="shard")
    if self.pool is None:
      yield from tqdm.tqdm((fn(x) for x in items), **bar)
    else:
      yield from tqdm.tqdm(self.pool.imap(fn, items, _describe_job), **bar)

  def close(self) -> None:
    if self.pool is not None:
      self.pool.close()


def _describe_job(item: str | tuple[int, str, _Context]) -> str:
  """How a dead worker's job is named: the pass and the input shard."""
  if isinstance(item, str):
    return f"counting codes in {item}"  # pass 1
  return f"writing the records of {item[1]}"  # pass 2


# ---------------------------------------------------------------------------------------------
# Reading and cleaning one shard in chunks of whole subjects (shared by both passes).


def rows_per_chunk(config: dict[str, Any], num_files: int) -> int:
  """Rows a worker reads at once: its share of memory_budget_mb (workers = min(num_workers,
  num_files))."""
  budget = float(config["memory_budget_mb"])
  if not budget > 0:
    raise ValueError(f"memory_budget_mb={budget} must be positive")
  workers = max(1, min(int(config["num_workers"]), num_files))
  return max(1, int(budget * 2**20 / workers / BYTES_PER_ROW))


def _clean_chunks(path: str) -> Iterable[events_lib.CleanRows]:
  ctx = _CTX
  for rows in meds_io.iter_shard(path, ctx.config["claim_id_column"],
                                 rows_per_chunk(ctx.config, ctx.num_shards)):
    yield clean_lib.clean(rows, _ANALYZER, ctx.splits, ctx.config["hash_split_fractions"],
                          clean_lib.Limits.from_config(ctx.config),
                          bool(ctx.config["numeric_text_values"]))


def _claim_starts(c: events_lib.CleanRows, mask: np.ndarray) -> np.ndarray:
  """Indices (into the masked rows) where a new claim starts: (subject, time, claim) changes."""
  s, t, k = c.subject[mask], c.time_us[mask], c.claim[mask]
  if s.size == 0:
    return np.zeros(0, np.int64)
  change = np.ones(s.size, bool)
  change[1:] = (s[1:] != s[:-1]) | (t[1:] != t[:-1]) | (k[1:] != k[:-1])
  return np.flatnonzero(change)


def _bottom_k(cost: np.ndarray, key: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k claims of smallest key (a uniform sample, the same however the claims are grouped)."""
  if key.size > k:
    sel = np.argpartition(key, k)[:k]
    cost, key = cost[sel], key[sel]
  return cost, key


# ---------------------------------------------------------------------------------------------
# Pass 1: train counts and cost sample.


def shard_counts(path: str) -> dict[str, Any]:
  """Pass 1 of one input shard (`pass1_total` makes it a total): the other drivers' entry."""
  return _pass1(path)


def _pass1(path: str) -> dict[str, Any]:
  k = int(_CTX.config["cost_sample_size"])
  train_split = conventions.SPLITS.index(conventions.TRAIN)
  counts: dict[str, int] = {}   # in the order of first appearance in the file
  lobs: set[str] = set()
  cost, key = np.zeros(0), np.zeros(0, np.uint64)
  max_day, subjects = None, []
  value_samples: dict[str, values_lib.Sample] = {}
  valued_counts: collections.Counter = collections.Counter()
  text_counts: dict[values_lib.TextKey, int] = {}
  for c in _clean_chunks(path):
    train = c.split == train_split
    if int(_CTX.config["max_text_values_per_code"]) > 0:
      values_lib.count_texts(c, train, text_counts)
    if int(_CTX.config["num_value_bins"]) > 1:
      values_lib.sample_values(c, train, int(_CTX.config["value_sample_size"]), value_samples)
      valued = train & (c.role == Role.OTHER) & np.isfinite(c.value)
      for i, n in enumerate(np.bincount(c.code_index[valued], minlength=len(c.codes.codes))
                            .tolist()):
        if n:
          valued_counts[c.codes.codes[i]] += n
    code_counts = np.bincount(c.code_index[train], minlength=len(c.codes.codes))
    for code, n in zip(c.codes.codes, code_counts.tolist()):
      counts[code] = counts.get(code, 0) + n
    lobs.update(c.codes.infos[i].value for i in np.unique(c.code_index[train & (
        c.role == Role.ENROLL_START)]))
    # Claim costs on train: sum of cost rows per (subject, time, claim).
    tmask = train & np.isin(c.role, events_lib.TOKEN_ROLES)
    starts = _claim_starts(c, tmask)
    if starts.size:
      vals = np.where(c.role[tmask] == Role.COST, c.value[tmask], 0).astype(np.float64)
      has_cost = np.add.reduceat((c.role[tmask] == Role.COST).astype(np.int64), starts) > 0
      chunk_cost = np.add.reduceat(vals, starts)[has_cost]
      chunk_key = meds_io.mix64(c.subject[tmask][starts], c.time_us[tmask][starts],
                                c.claim[tmask][starts])[has_cost]
      cost, key = _bottom_k(np.concatenate([cost, chunk_cost]),
                            np.concatenate([key, chunk_key]), k)
    dated = np.isin(c.role, events_lib.DATED_ROLES)
    if dated.any():
      max_day = max(int(c.day[dated].max()), -2**62 if max_day is None else max_day)
    subjects.append(c.subject_ids)
  return {"path": path, "counts": {code: n for code, n in counts.items() if n},
          "lobs": sorted(lobs), "cost": cost, "cost_key": key, "max_day": max_day,
          "subjects": np.concatenate(subjects), "value_samples": value_samples,
          "valued_counts": dict(valued_counts), "text_counts": values_lib.top_texts(text_counts)}


# ---------------------------------------------------------------------------------------------
# Pass 2: records.


def _pass2(job: tuple[int, str, _Context]) -> dict[str, Any]:
  """The local driver's pass 2 of one shard: its records into one ShardWriter per kind and
  split; returns the shard's counts (`merge_pass2` adds them up)."""
  global _RECORDS_WRITTEN
  index, path, ctx = job
  _set_pass2(ctx)
  out = new_pass2_counts()
  with contextlib.ExitStack() as stack:
    writers = {(kind, split): stack.enter_context(records.ShardWriter(os.path.join(
        _CTX.output_dir, kind, records.shard_name(split, index, _CTX.num_shards))))
               for kind in (records.TIMELINE, records.TASK) for split in conventions.SPLITS}
    for kind, split, record in shard_records(path, out):
      writers[kind, split].write(record)
      if kind == records.TIMELINE:
        _RECORDS_WRITTEN += 1
        _test_hook("records", _RECORDS_WRITTEN)
  return out


def new_pass2_counts() -> dict[str, Any]:
  """Zero pass-2 counts of one shard (needs the pass-2 worker context: `_set_pass2`)."""
  return {"input_rows": 0, "dropped": collections.Counter(), "used_rows": 0,
          "per_split": _split_counters(), "stats": timeline.Stats.zeros(_TOKENIZER),
          "hashed_subjects": 0, "rows_by_system": collections.Counter(), "coverage": {},
          "text_values": dict.fromkeys(TEXT_VALUE_COUNTS, 0)}


def shard_records(path: str, out: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
  """Pass 2 of one input shard, the per-subject work both drivers share (the local builder and
  `build_beam`): cleans it chunk by chunk, tokenizes each subject and computes its task records;
  yields (kind, split, record) and adds the shard's counts to `out` (`new_pass2_counts`).
  Needs the worker context (`_init_worker`, `_set_pass2`)."""
  tok, ctx = _TOKENIZER, _CTX
  window = labels.Window(ctx.index_day)
  stats, per_split = out["stats"], out["per_split"]
  task_writer = _TASK_WRITERS[ctx.config["task"]]
  for c in _clean_chunks(path):
    raw_codes, pre_index = c.codes.codes, c.code_index
    mapped_codes = _with_parents(c, ctx.code_mapping)
    c = values_lib.with_value_bins(mapped_codes, ctx.value_bins, _ANALYZER)
    c, text_rows, categorized = values_lib.with_text_categories(c, ctx.text_categories,
                                                                _ANALYZER)
    out["text_values"]["read_as_number"] += c.numeric_texts
    out["text_values"]["rows"] += text_rows
    out["text_values"]["category"] += categorized
    out["text_values"]["bare_code"] += text_rows - categorized
    code_ids = timeline.code_token_ids(tok, c.codes)
    for ev in c.subjects(ctx.data_end_day):
      split = conventions.SPLITS[ev.split]
      fields = timeline.tokenize(ev, tok, code_ids,
                                 stats if split == conventions.TRAIN else None)
      yield records.TIMELINE, split, records.make_record(
          records.TIMELINE, {"subject_id": ev.subject_id, **fields})
      st = per_split[split]
      st["patients"] += 1
      st["tokens"] += int(fields["tokens"].size)
      tasks: list[dict[str, Any]] = []
      task_writer(ev, fields, code_ids, window, tasks.append, st)
      for record in tasks:
        yield records.TASK, split, record
    out["input_rows"] += c.input_rows
    out["dropped"].update(c.dropped)
    out["used_rows"] += int(c.subject.size)
    out["hashed_subjects"] += c.hashed_subjects
    out["rows_by_system"].update(_rows_by_system(c))
    _count_coverage(out["coverage"], raw_codes, mapped_codes.codes.codes, pre_index, c.codes,
                    c.code_index, tok)


def merge_pass2(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
  """Adds shard (or partial-total) counts b into a; returns a. Order-free, so it is also the
  Beam combine's merge."""
  for k in ("input_rows", "used_rows", "hashed_subjects"):
    a[k] += b[k]
  a["dropped"].update(b["dropped"])
  a["rows_by_system"].update(b["rows_by_system"])
  for k, n in b["text_values"].items():
    a["text_values"][k] += n
  for family, how in b["coverage"].items():
    mine = a["coverage"].setdefault(family, dict.fromkeys(COVERAGE, 0))
    for k, n in how.items():
      mine[k] += n
  for s, st in b["per_split"].items():
    for k in ("patients", "tokens", "task_examples", "task_with_target_data", "task_positives",
              "task_empty_histories"):
      a["per_split"][s][k] += st[k]
    for k, n in st["task_excluded"].items():
      a["per_split"][s]["task_excluded"][k] += n
  a["stats"] = a["stats"] + b["stats"]
  return a


def _with_parents(c: events_lib.CleanRows, mapping: Optional[dict[str, str]]
                  ) -> events_lib.CleanRows:
  """The chunk with its raw codes rewritten to their parents (code_metadata.code_mapping)."""
  if not mapping or not any(code in mapping for code in c.codes.codes):
    return c
  codes = [mapping.get(code, code) for code in c.codes.codes]
  infos = [_ANALYZER.analyze(code) for code in codes]
  return dataclasses.replace(c, codes=events_lib.CodeTable(codes, infos))


COVERAGE = ("specific", "parent", "unk")
# report.json's text_values: generic rows whose text was read as their numeric value; rows with a
# text value (and no numeric one), those that got a category token and those that kept the bare
# code (a rare or high-cardinality text).
TEXT_VALUE_COUNTS = ("read_as_number", "rows", "category", "bare_code")


def _count_coverage(out: dict[str, dict[str, int]], raw_codes: list[str], mapped_codes: list[str],
                    raw_index: np.ndarray, codes: events_lib.CodeTable, code_index: np.ndarray,
                    tok: tok_lib.Tokenizer) -> None:
  """Rows per code family (the raw code's first `//` part) that got their own token (or its
  value bin), a parent's (a codes.parquet parent, an ICD-10-CM ancestor) or their system's
  [UNK]. raw_index / code_index: each row's raw code and final (parent, value bin) code."""
  k = max(len(codes.codes), 1)
  pairs, n = np.unique(raw_index.astype(np.int64) * k + code_index, return_counts=True)
  for pair, rows in zip(pairs.tolist(), n.tolist()):
    raw, final = divmod(pair, k)
    ids = tok.code_token_ids(codes.codes[final])
    if not ids:
      continue
    token, info = tok.vocab.tokens[ids[-1]], codes.infos[final]
    if token.endswith(f"//{tok_lib.UNK}"):
      how = "unk"
    elif mapped_codes[raw] != raw_codes[raw] or (info.system == cs.ICD10CM
                                                 and token != f"{cs.ICD10CM}//{info.key}"):
      how = "parent"
    else:
      how = "specific"
    family = out.setdefault(raw_codes[raw].partition("//")[0], dict.fromkeys(COVERAGE, 0))
    family[how] += rows


def _split_counters() -> dict[str, dict[str, Any]]:
  return {s: {"patients": 0, "tokens": 0, "task_examples": 0, "task_with_target_data": 0,
              "task_positives": 0, "task_empty_histories": 0,
              "task_excluded": {r: 0 for r in TASK_EXCLUSIONS}} for s in conventions.SPLITS}


def _claims_records(ev: events_lib.SubjectEvents, fields: dict[str, Any], code_ids: list,
                    window: labels.Window, write, st: dict[str, Any]) -> None:
  """The claims convention: one record at the index date for an eligible subject."""
  del code_ids
  excluded = labels.exclusion(ev, window, _CTX.config)
  if excluded is not None:
    st["task_excluded"][excluded] += 1
    return
  write(records.make_record(records.TASK, {
      "subject_id": ev.subject_id, **timeline.history_at(fields, window.index, _TOKENIZER),
      "prefix_len": fields["prefix_len"], "index_day": window.index,
      **labels.compute(ev, window)}))
  st["task_examples"] += 1
  st["task_with_target_data"] += labels.has_target_year_data(ev, window)


def events_through(ev: events_lib.SubjectEvents, time_us: int) -> events_lib.SubjectEvents:
  """The subject's rows at or before time_us (the static sex row kept): its history then."""
  keep = (ev.time_us <= time_us) | (ev.role == Role.GENDER)
  day = time_us // meds_tasks.US_PER_DAY
  death = ev.death if ev.death is not None and np.any(keep & (ev.role == Role.DEATH)) else None
  return dataclasses.replace(
      ev, role=ev.role[keep], day=ev.day[keep], time_us=ev.time_us[keep], claim=ev.claim[keep],
      code_index=ev.code_index[keep], value=ev.value[keep], death=death,
      start_day=min(ev.start_day, day))


def _label_records(ev: events_lib.SubjectEvents, fields: dict[str, Any], code_ids: list,
                   window: labels.Window, write, st: dict[str, Any]) -> None:
  """A label task: one record per label row of the subject, the history through its
  prediction time (per-event times), the claims targets at its day, the label's values."""
  del fields, window
  tok = _TOKENIZER
  for i in _TASK_LABELS.rows_of(ev.subject_id):
    w = _TASK_LABELS.window(i)
    past = timeline.tokenize(events_through(ev, w.time_us), tok, code_ids, None)
    # Every token of `past` is at or before the prediction time: all are kept (but the EOS).
    history = timeline.history_at(past, w.index, tok, through_day=True)
    write(records.make_record(records.TASK, {
        "subject_id": ev.subject_id, **history, "prefix_len": past["prefix_len"],
        "index_day": w.index, **labels.compute(ev, w)}))
    st["task_examples"] += 1
    st["task_with_target_data"] += labels.has_target_year_data(ev, w)
    st["task_positives"] += int(w.boolean_value == 1)
    # Empty: nothing but the demographic prefix before the anchor (`past` ends with its EOS).
    st["task_empty_histories"] += int(past["tokens"].size - 1 <= int(past["prefix_len"]))


def _no_records(ev, fields, code_ids, window, write, st) -> None:
  """No task (pretraining only, e.g. MEDS-DEV's unsupervised stage): timelines, no task records."""
  del ev, fields, code_ids, window, write, st


# config.task -> how a subject's task records are written (lmm_jax.data.meds_tasks).
_TASK_WRITERS = {meds_tasks.CLAIMS: _claims_records, meds_tasks.LABELS: _label_records,
                 meds_tasks.ACES: _label_records, meds_tasks.NONE: _no_records}


def _rows_by_system(c: events_lib.CleanRows) -> dict[str, int]:
  counts = np.bincount(c.code_index, minlength=len(c.codes.codes))
  out: collections.Counter = collections.Counter()
  for i in np.flatnonzero(counts):
    out[c.codes.infos[i].system] += int(counts[i])
  return dict(out)


# ---------------------------------------------------------------------------------------------
# Driver.


def _check_subjects_in_one_file(results: list[dict[str, Any]]) -> None:
  if len(results) < 2:
    return
  ids = np.concatenate([r["subjects"] for r in results])
  file_of = np.concatenate([np.full(r["subjects"].size, i, np.int32)
                            for i, r in enumerate(results)])
  order = np.argsort(ids, kind="stable")
  ids, file_of = ids[order], file_of[order]
  dup = np.flatnonzero(ids[1:] == ids[:-1])
  if dup.size:
    f1, f2 = results[file_of[dup[0]]]["path"], results[file_of[dup[0] + 1]]["path"]
    raise MEDSFormatError(
        f2, f"{dup.size} subject(s) have rows in more than one data file (also in {f1}); MEDS "
        "requires all rows of a subject in one file, sorted by time", "subject_id")


def lock_path(output_dir: str) -> str:
  """The lock file a build of output_dir holds (beside it: the output itself is replaced)."""
  output_dir = os.path.abspath(output_dir)
  return os.path.join(os.path.dirname(output_dir), f".{os.path.basename(output_dir)}.lock")


@contextlib.contextmanager
def _exclusive_lock(output_dir: str) -> Iterator[None]:
  path = lock_path(output_dir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise BuildLockedError(f"another build is writing {output_dir} (it holds the lock {path}); "
                             "wait for it to finish or pass another --output_dir") from None
    yield
  finally:
    os.close(fd)  # releases the lock (the file stays: removing it would race another build)


def _check_replaceable(output_dir: str) -> None:
  """An existing output_dir must be empty or a build: it is replaced whole."""
  if not os.path.lexists(output_dir):
    return
  if not os.path.isdir(output_dir) or os.path.islink(output_dir):
    raise ValueError(f"--output_dir {output_dir} exists and is not a directory; pass a new or "
                     "empty directory")
  foreign = sorted(set(os.listdir(output_dir)) - _OUTPUT_ENTRIES)
  if foreign:
    raise ValueError(f"--output_dir {output_dir} holds files that are not a dataset build "
                     f"({', '.join(foreign[:5])}); a build replaces the whole directory, so pass "
                     "a new or empty directory")


def _scratch_dirs(output_dir: str) -> list[str]:
  """Leftovers of killed builds of output_dir (only ever touched under its lock)."""
  base = os.path.join(os.path.dirname(output_dir), f".{os.path.basename(output_dir)}")
  return glob.glob(glob.escape(base) + ".building-*") + glob.glob(glob.escape(base) + ".old-*")


def _fsync_dir(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _move_into_place(work_dir: str, output_dir: str) -> None:
  """Renames the complete work_dir to output_dir; an older output is deleted only afterwards."""
  parent, name = os.path.dirname(output_dir), os.path.basename(output_dir)
  old = None
  if os.path.lexists(output_dir):
    old = os.path.join(parent, f".{name}.old-{os.getpid()}")
    os.rename(output_dir, old)
  os.rename(work_dir, output_dir)
  _fsync_dir(parent)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def config_digest(cfg: dict[str, Any]) -> str:
  """sha256 of the builder config (canonical JSON): which settings built a dataset."""
  return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()


# How the two passes run: engine(ctx, paths) is a context manager giving (pass1, pass2);
# pass1() -> the merged pass-1 results (`_merge_pass1`), pass2(ctx2) -> the merged pass-2 counts
# (`merge_pass2`), records written under ctx2.output_dir. `local_engine` (worker processes) or
# `build_beam.beam_engine` (an Apache Beam pipeline).
Engine = Callable[[_Context, list[str]], ContextManager[tuple[Callable[[], dict[str, Any]],
                                                             Callable[[_Context], dict[str, Any]]]]]


def build_dataset(meds_dir: str, output_dir: str, config: ml_collections.ConfigDict,
                  engine: Optional[Engine] = None) -> dict[str, Any]:
  """Builds vocab.json, report.json, the timeline/ and task/ shards and, last, manifest.json;
  returns the report.

  The build runs under an exclusive lock on output_dir (a second build fails at once with
  BuildLockedError), in a temporary directory renamed into place when complete (see the module
  docstring). config: data_prep/configs/build_dataset.py (documented in docs/data.md).
  engine: how the passes run (default `local_engine`; `build_beam.beam_engine` for Beam).
  """
  t0 = time.time()
  cfg = _plain(config)
  tok_cfg = tok_lib.tokenizer_config(cfg)
  meds_dir = os.path.abspath(meds_dir)
  output_dir = os.path.abspath(output_dir)
  paths = meds_io.data_files(meds_dir)
  meds_io.dataset_metadata(meds_dir)
  _check_task_config(cfg)
  splits = meds_io.read_splits(meds_dir) if cfg["split_source"] == "metadata" else None
  ctx = _Context(cfg, splits, len(paths))
  with _exclusive_lock(output_dir):
    _check_replaceable(output_dir)
    for stale in _scratch_dirs(output_dir):
      shutil.rmtree(stale, ignore_errors=True)
    work_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.building-",
                                dir=os.path.dirname(output_dir))
    try:
      if cfg["task"] == meds_tasks.ACES:
        ctx.labels_dir = aces_tasks.extract_aces(cfg["task_aces_config"], paths,
                                                 os.path.join(work_dir, meds_tasks.LABELS_DIR))
      elif cfg["task"] == meds_tasks.LABELS:
        ctx.labels_dir = os.path.abspath(cfg["task_labels_dir"])
      with (engine or local_engine)(ctx, paths) as passes:
        report = _build(meds_dir, output_dir, work_dir, cfg, tok_cfg, paths, splits, ctx,
                        passes, t0)
      records.write_manifest(work_dir, vocab_size=report["vocab_size"], builder={
          "version": BUILDER_VERSION, "config_digest": config_digest(cfg)})
      os.chmod(work_dir, 0o755 & ~_umask())  # mkdtemp makes it 0700; a build is readable by all
      _move_into_place(work_dir, output_dir)
    except BaseException:
      shutil.rmtree(work_dir, ignore_errors=True)
      raise
  return report


def _check_task_config(cfg: dict[str, Any]) -> None:
  if cfg["task"] not in _TASK_WRITERS:
    raise ValueError(f"config.task={cfg['task']!r}: expected one of {sorted(_TASK_WRITERS)}")
  if cfg["split_source"] not in ("metadata", "hash"):
    raise ValueError(f"config.split_source={cfg['split_source']!r}: expected 'metadata' or "
                     "'hash'")
  need = {meds_tasks.LABELS: "task_labels_dir", meds_tasks.ACES: "task_aces_config"}
  key = need.get(cfg["task"])
  if key and not cfg[key]:
    raise ValueError(f"config.task={cfg['task']!r} needs --config.{key}")
  if cfg["task"] == meds_tasks.LABELS and not os.path.isdir(cfg["task_labels_dir"]):
    raise meds_tasks.TaskDefinitionError(
        f"task_labels_dir={cfg['task_labels_dir']}: no such directory")


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _warm_terminology() -> None:
  """Loads the code tables once in the parent, so forked workers share them."""
  terminology.icd10cm_valid("E11.9")
  terminology.icd9_to_icd10cm("250.00")


@contextlib.contextmanager
def local_engine(ctx: _Context, paths: list[str]) -> Iterator[tuple[Any, Any]]:
  """The passes in this machine's worker processes (`_Runner`), one input shard per job."""
  if min(int(ctx.config["num_workers"]), len(paths)) > 1:
    _warm_terminology()
  runner = _Runner(ctx, len(paths))

  def pass1() -> dict[str, Any]:
    # Merged as results arrive so the parent holds one bounded cost sample, not one per shard.
    total = new_pass1_total()
    for r in runner.map(_pass1, paths, "pass 1/2: counting codes"):
      merge_pass1(total, pass1_total(r), ctx.config)
    return total

  def pass2(ctx2: _Context) -> dict[str, Any]:
    total = None
    jobs = [(i, p, ctx2) for i, p in enumerate(paths)]
    for done, r in enumerate(runner.map(_pass2, jobs, "pass 2/2: writing records"), 1):
      _test_hook("shards", done)
      total = r if total is None else merge_pass2(total, r)
    return total

  try:
    yield pass1, pass2
  finally:
    runner.close()


def new_pass1_total() -> dict[str, Any]:
  return {"counts": collections.Counter(), "lobs": set(), "cost": np.zeros(0),
          "cost_key": np.zeros(0, np.uint64), "subjects": [], "max_days": [],
          "value_samples": {}, "valued_counts": collections.Counter(),
          "text_counts": collections.Counter()}


def pass1_total(r: dict[str, Any]) -> dict[str, Any]:
  """One shard's pass-1 result (`_pass1`) as a total that `merge_pass1` adds up."""
  total = new_pass1_total()
  total.update(counts=collections.Counter(r["counts"]), lobs=set(r["lobs"]), cost=r["cost"],
               cost_key=r["cost_key"], subjects=[{"path": r["path"], "subjects": r["subjects"]}],
               max_days=[] if r["max_day"] is None else [r["max_day"]],
               value_samples=dict(r["value_samples"]),
               valued_counts=collections.Counter(r["valued_counts"]),
               text_counts=collections.Counter(r["text_counts"]))
  return total


def merge_pass1(a: dict[str, Any], b: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
  """Adds pass-1 total b into a; returns a. Every part is order-free (counts, sets, bottom-k
  samples of a data-derived key), so it is also the Beam combine's merge."""
  a["counts"].update(b["counts"])
  a["text_counts"].update(b["text_counts"])
  a["valued_counts"].update(b["valued_counts"])
  for code, sample in b["value_samples"].items():
    values_lib.merge(a["value_samples"], code, sample, int(cfg["value_sample_size"]))
  a["lobs"].update(b["lobs"])
  a["cost"], a["cost_key"] = _bottom_k(np.concatenate([a["cost"], b["cost"]]),
                                       np.concatenate([a["cost_key"], b["cost_key"]]),
                                       int(cfg["cost_sample_size"]))
  a["subjects"].extend(b["subjects"])
  a["max_days"].extend(b["max_days"])
  return a


def _build(meds_dir, output_dir, work_dir, cfg, tok_cfg, paths, splits, ctx, passes, t0
           ) -> dict[str, Any]:
  """The two passes, writing into work_dir; the report names output_dir, where it will be."""
  rows_per_chunk(cfg, len(paths))  # a bad memory_budget_mb fails before any work
  clean_lib.Limits.from_config(cfg)  # and bad value limits
  run_pass1, run_pass2 = passes
  # Pass 1.
  p1 = run_pass1()
  counts, lobs, cost = p1["counts"], p1["lobs"], p1["cost"]
  order = {p: i for i, p in enumerate(paths)}  # the local order, whatever order Beam merged in
  subjects = sorted(p1["subjects"], key=lambda r: order[r["path"]])
  max_days = p1["max_days"]
  value_samples, valued_counts = p1["value_samples"], p1["valued_counts"]
  text_counts = p1["text_counts"]
  del p1
  _check_subjects_in_one_file(subjects)
  label_task = bool(ctx.labels_dir)
  task_labels = meds_tasks.read_labels(ctx.labels_dir) if label_task else None
  unmatched = 0
  if task_labels is not None:
    known = np.concatenate([r["subjects"] for r in subjects])
    unmatched = int((~np.isin(task_labels.subject_id, known)).sum())
  del subjects
  if not max_days:
    raise MEDSFormatError(meds_dir, "no dated events in any data file")
  data_end = max(max_days)
  index_day = (meds_io.year_start_day(data_end) if cfg["index_date"] == "auto"
               else meds_io.date_to_day(cfg["index_date"]))

  lobs.discard("")
  code_meta = (code_metadata.read_code_metadata(meds_dir) if cfg["use_code_metadata"]
               else None)
  mapping = code_metadata.code_mapping(code_meta, counts, tok_lib.CodeAnalyzer(tok_cfg),
                                       int(cfg["min_code_count"]), cfg["codes_parquet_parents"])
  raw_counts, counts = counts, collections.Counter(code_metadata.mapped_counts(counts, mapping))
  value_bins = values_lib.fit(value_samples, valued_counts, mapping, int(cfg["num_value_bins"]),
                              int(cfg["min_code_count"]))
  del value_samples
  counts.update(value_bins.bin_counts)
  text_categories = values_lib.fit_texts(text_counts, mapping,
                                         int(cfg["max_text_values_per_code"]),
                                         int(cfg["min_code_count"]))
  del text_counts
  counts.update(text_categories.counts)
  vocab = tok_lib.build_vocabulary(tok_cfg, counts, tok_lib.cost_edges(
      cfg["cost_bin_spacing"], int(cfg["num_cost_bins"]), cost, cfg["cost_bin_low"],
      cfg["cost_bin_high"]), lobs)
  if code_meta is not None:
    code_metadata.describe(vocab, code_meta, raw_counts, mapping, int(cfg["min_code_count"]))
  values_lib.describe_bins(vocab, value_bins, tok_lib.Tokenizer(vocab))
  values_lib.describe_texts(vocab, text_categories, tok_lib.Tokenizer(vocab))
  vocab_path = os.path.join(work_dir, records.VOCAB_FILE)
  vocab.save(vocab_path)

  # Pass 2.
  # Open-ended coverage (no enrollment rows, or a START without an END) lasts to the end of the
  # calendar year of the last event: datasets are assumed to cover whole calendar years.
  open_end = meds_io.year_start_day(meds_io.year_start_day(data_end) + 366) - 1
  ctx2 = dataclasses.replace(ctx, splits=None, output_dir=work_dir, vocab_path=vocab_path,
                             index_day=index_day, data_end_day=open_end,
                             labels_dir=ctx.labels_dir, code_mapping=mapping,
                             value_bins=value_bins, text_categories=text_categories)
  p2 = run_pass2(ctx2)
  dropped: collections.Counter = collections.Counter({r: 0 for r in DROP_REASONS})
  dropped.update(p2["dropped"])
  input_rows, used_rows, hashed = p2["input_rows"], p2["used_rows"], p2["hashed_subjects"]
  per_split, rows_by_system, coverage = p2["per_split"], p2["rows_by_system"], p2["coverage"]
  text_values, stats = p2["text_values"], p2["stats"]
  vocab = tok_lib.finalize(vocab, stats.token_counts, stats.cost_sums, stats.cost_counts,
                           stats.gap_sums, stats.gap_counts, counts)
  vocab.save(vocab_path)

  report = {
      "meds_dir": meds_dir,
      "output_dir": output_dir,
      "num_input_shards": len(paths),
      "input_rows": input_rows,
      "used_rows": used_rows,
      "dropped": dict(dropped),
      "rows_by_system": dict(sorted(rows_by_system.items())),
      "code_coverage": dict(sorted(coverage.items())),
      "codes_mapped_to_parents": len(mapping),
      "codes_with_value_bins": len(value_bins.edges),
      "codes_with_text_categories": len(text_categories.categories),
      "text_values": text_values,
      "splits_source": ("metadata/subject_splits.parquet" if splits is not None
                        else "hash of subject_id"),
      "subjects_hash_split": hashed,
      "split_directory_conflicts": meds_io.split_directory_conflicts(meds_dir, paths, splits),
      "index_date": meds_io.days_to_date(index_day),
      "index_day": index_day,
      "data_end_date": meds_io.days_to_date(data_end),
      "vocab_size": vocab.size,
      "patients": {s: per_split[s]["patients"] for s in conventions.SPLITS},
      "tokens": {s: per_split[s]["tokens"] for s in conventions.SPLITS},
      "task_examples": {s: per_split[s]["task_examples"] for s in conventions.SPLITS},
      "task_exclusions": {s: per_split[s]["task_excluded"] for s in conventions.SPLITS},
      "task_examples_with_target_year_data": {s: per_split[s]["task_with_target_data"]
                                              for s in conventions.SPLITS},
      "task": cfg["task"],
      "config": cfg,
      "elapsed_s": round(time.time() - t0, 2),
  }
  if input_rows != used_rows + sum(dropped.values()):
    raise AssertionError(f"row accounting is off: {input_rows} != {used_rows} + "
                         f"{sum(dropped.values())}")
  if label_task:
    report["task_name"] = os.path.basename(cfg["task_aces_config"] or cfg["task_labels_dir"])
    report["task_label_rows"] = int(task_labels.subject_id.size)
    report["task_label_rows_without_subject"] = unmatched
    report["task_empty_histories"] = {s: per_split[s]["task_empty_histories"]
                                      for s in conventions.SPLITS}
    report["task_label_value"] = task_labels.value_kind
    if task_labels.is_boolean:
      report["task_positives"] = {s: per_split[s]["task_positives"] for s in conventions.SPLITS}
    meds_tasks.check_task(report, cfg)
    # The claims checks' target-year share does not apply to a label task.
    labels.check_build(report, {**cfg, "min_share_with_target_year_data": 0.0})
  elif cfg["task"] == meds_tasks.NONE:
    empty = [s for s in cfg["required_splits"] if not report["patients"][s]]
    if empty:
      raise ValueError(f"the build has no patients in split(s) {empty} (see report.json's "
                       "dropped; config.required_splits lists the splits that must not be empty)")
  else:
    labels.check_build(report, cfg)
  with open(os.path.join(work_dir, records.REPORT_FILE), "w") as f:
    json.dump(report, f, indent=1, sort_keys=True)
    f.write("\n")
  return report
