"""MEDS -> vocabulary and ArrayRecord records (`data_prep.build_dataset` is its binary).

Two streaming passes over the input shards, each shard handled independently by a worker process:
  pass 1 reads every shard, cleans it (the same drop rules as pass 2) and, on the train split only,
         counts codes and keeps a bounded sample of per-claim costs (the bottom-k of a data-derived
         hash: a uniform sample that does not depend on the number of workers). The parent builds
         the vocabulary from the merged counts and the cost-bin edges from the sample.
  pass 2 tokenizes every shard and writes one timeline shard and one task shard per input shard
         and split (`records.shard_name(split, i, num_input_shards)`), returning the counts that
         finish the vocabulary (train token counts, mean dollars per cost bin, mean days per gap).
Peak memory is one input shard per worker plus the vocabulary, not the dataset. See docs/data.md.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Iterable, Optional

import ml_collections
import numpy as np
import tqdm

from lmm_jax import conditions
from lmm_jax import conventions
from lmm_jax import workers as workers_lib
from lmm_jax.data import code_systems as cs
from lmm_jax.data import meds_io
from lmm_jax.data import records
from lmm_jax.data import terminology
from lmm_jax.data import tokenizer as tok_lib
from lmm_jax.data import vocab as vocab_lib
from lmm_jax.data.code_systems import Role
from lmm_jax.data.meds_io import MEDSFormatError  # pylint: disable=unused-import (re-export)

DROP_REASONS = (
    "duplicate_row",               # identical in every column to an earlier row of the file
    "subject_in_unknown_split",    # subject_splits.parquet names a split other than ours
    "unparseable_time",            # a string time that is not ISO-8601
    "null_time",                   # null time on a row that needs one (anything but sex)
    "static_row_unused",           # a static (null-time) row of a system we do not use
    "other_cost_measure",          # a COST// row other than config.cost_code
    "cost_without_value",          # the cost row has a null numeric_value
    "negative_cost",
    "event_before_birth",          # event day before the MEDS_BIRTH day
    "event_after_death",           # event day after the MEDS_DEATH day
    "subject_without_events",      # every row of a subject with no dated event or enrollment
)
TASK_EXCLUSIONS = ("no_birth_date", "died_before_index", "too_little_history",
                   "no_history_before_index", "not_enrolled_through_target_year",
                   "died_in_target_year")
_TOKEN_ROLES = (Role.CLAIM, Role.POS, Role.DX, Role.PROC, Role.DRUG, Role.OTHER, Role.COST)
_DATED_ROLES = _TOKEN_ROLES + (Role.ENROLL_START, Role.ENROLL_END, Role.DEATH)
_DAYS_PER_YEAR = 365.25


def default_config() -> ml_collections.ConfigDict:
  """The builder's configuration (documented field by field in docs/data.md)."""
  c = ml_collections.ConfigDict()
  c.code_system_rules = cs.default_rules()
  c.cost_code = cs.DEFAULT_COST_CODE
  c.claim_id_column = "claim_id"
  c.min_code_count = 5
  c.icd10_category_tokens = True
  c.map_icd9_to_icd10 = True
  c.drug_grouping = "ndc"          # 'ndc' | 'ndc9' | 'hhs_class'
  c.time_gap_edges_days = (1, 7, 30, 91, 182, 365)
  c.num_cost_bins = 20
  c.cost_sample_size = 200_000     # claims kept (bounded) to fit the cost-bin quantiles
  c.index_date = "auto"            # 'auto' = Jan 1 of the last calendar year in the data
  c.min_history_days = 365
  c.require_full_target_year = True
  c.keep_decedents = True
  c.hash_split_fractions = (0.8, 0.1, 0.1)
  c.num_workers = os.cpu_count() or 1
  c.progress = True
  c.max_timeline_tokens = ml_collections.config_dict.placeholder(int)
  return c


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


_CTX: Optional[_Context] = None
_ANALYZER: Optional[tok_lib.CodeAnalyzer] = None
_TOKENIZER: Optional[tok_lib.Tokenizer] = None


def _init_worker(ctx: _Context) -> None:
  global _CTX, _ANALYZER, _TOKENIZER
  _CTX = ctx
  _ANALYZER = tok_lib.CodeAnalyzer(tok_lib.tokenizer_config(ctx.config))
  _TOKENIZER = None


def _set_pass2(ctx: _Context) -> None:
  """Pass-2 fields of the context (and the tokenizer), loaded once per worker process."""
  global _CTX, _TOKENIZER
  if _TOKENIZER is None or _CTX.vocab_path != ctx.vocab_path:
    _TOKENIZER = tok_lib.Tokenizer(vocab_lib.Vocabulary.load(ctx.vocab_path))
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
                                          initializer=_init_worker, initargs=(ctx,))

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
# Cleaning one shard (shared by both passes).


@dataclasses.dataclass
class _Clean:
  """The used rows of a shard sorted by (subject, time, claim, role), plus accounting."""
  path: str
  input_rows: int
  dropped: collections.Counter
  subjects_in_file: np.ndarray     # int64 unique subject ids (for the cross-file check)
  subject: np.ndarray
  split: np.ndarray                # int8 index into conventions.SPLITS
  time_us: np.ndarray
  day: np.ndarray
  role: np.ndarray                 # int8 Role
  code_index: np.ndarray
  value: np.ndarray
  claim: np.ndarray
  codes: list[str]
  infos: list[tok_lib.CodeInfo]
  hashed_subjects: int


def _clean(path: str) -> _Clean:
  ctx, analyzer = _CTX, _ANALYZER
  rows = meds_io.read_shard(path, ctx.config["claim_id_column"])
  n = rows.num_rows
  infos = [analyzer.analyze(c) for c in rows.codes]
  code_role = np.array([i.role for i in infos], np.int8).reshape(-1)
  code_static_ok = np.array([cs.is_static_allowed(i.system) for i in infos], bool).reshape(-1)
  code_coded = np.array([i.system in (cs.LAB, cs.OTHER) for i in infos], bool).reshape(-1)
  role = code_role[rows.code_index] if n else np.zeros(0, np.int8)

  # Splits: metadata when present (unlisted subjects are hashed), else hashed on subject_id.
  uniq, inverse = np.unique(rows.subject_id, return_inverse=True)
  fractions = ctx.config["hash_split_fractions"]
  if ctx.splits is not None:
    sub_split = ctx.splits.lookup(uniq)
    unlisted = sub_split == -1
    sub_split[unlisted] = meds_io.hash_split(uniq[unlisted], fractions)
    hashed = int(unlisted.sum())
  else:
    sub_split, hashed = meds_io.hash_split(uniq, fractions), int(uniq.size)
  split = sub_split[inverse]

  reason = np.full(n, -1, np.int16)

  def mark(mask: np.ndarray, name: str) -> None:
    reason[(reason < 0) & mask] = DROP_REASONS.index(name)

  mark(rows.duplicate, "duplicate_row")
  mark(split == -2, "subject_in_unknown_split")
  mark(rows.time_bad, "unparseable_time")
  if n:
    static_ok = code_static_ok[rows.code_index]
    mark(rows.time_null & ~static_ok & code_coded[rows.code_index], "static_row_unused")
    mark(rows.time_null & ~static_ok, "null_time")
  mark(role == Role.COST_OTHER, "other_cost_measure")
  mark((role == Role.COST) & np.isnan(rows.value), "cost_without_value")
  mark((role == Role.COST) & (rows.value < 0), "negative_cost")
  day = rows.day

  # Birth and death days per subject (from rows not dropped so far).
  ok = reason < 0
  birth = np.full(uniq.size, np.iinfo(np.int64).max, np.int64)
  death = np.full(uniq.size, np.iinfo(np.int64).max, np.int64)
  np.minimum.at(birth, inverse[ok & (role == Role.BIRTH)], day[ok & (role == Role.BIRTH)])
  np.minimum.at(death, inverse[ok & (role == Role.DEATH)], day[ok & (role == Role.DEATH)])
  birth = np.where(birth == np.iinfo(np.int64).max, np.iinfo(np.int64).min, birth)
  dated = ~rows.time_null
  mark(dated & (day < birth[inverse]), "event_before_birth")
  mark(dated & (day > death[inverse]), "event_after_death")
  ok = reason < 0
  has_event = np.zeros(uniq.size, bool)
  ev = ok & np.isin(role, _TOKEN_ROLES + (Role.ENROLL_START,))
  has_event[inverse[ev]] = True
  mark(~has_event[inverse], "subject_without_events")

  keep = np.flatnonzero(reason < 0)
  time_sort = np.where(rows.time_null, np.iinfo(np.int64).min, rows.time_us)
  order = keep[np.lexsort((keep, role[keep], rows.claim[keep], time_sort[keep],
                           rows.subject_id[keep]))]
  counts = np.bincount(reason[reason >= 0], minlength=len(DROP_REASONS))
  dropped = collections.Counter({r: int(c) for r, c in zip(DROP_REASONS, counts)})
  return _Clean(path, n, dropped, uniq, rows.subject_id[order], split[order], time_sort[order],
                day[order], role[order], rows.code_index[order], rows.value[order],
                rows.claim[order], rows.codes, infos, hashed)


def _claim_starts(c: _Clean, mask: np.ndarray) -> np.ndarray:
  """Indices (into the masked rows) where a new claim starts: (subject, time, claim) changes."""
  s, t, k = c.subject[mask], c.time_us[mask], c.claim[mask]
  if s.size == 0:
    return np.zeros(0, np.int64)
  change = np.ones(s.size, bool)
  change[1:] = (s[1:] != s[:-1]) | (t[1:] != t[:-1]) | (k[1:] != k[:-1])
  return np.flatnonzero(change)


# ---------------------------------------------------------------------------------------------
# Pass 1: train counts and cost sample.


def _pass1(path: str) -> dict[str, Any]:
  c = _clean(path)
  train = c.split == conventions.SPLITS.index(conventions.TRAIN)
  code_counts = np.bincount(c.code_index[train], minlength=len(c.codes))
  counts = {c.codes[i]: int(code_counts[i]) for i in np.flatnonzero(code_counts)}
  lobs = sorted({c.infos[i].value for i in np.unique(c.code_index[train & (
      c.role == Role.ENROLL_START)])})
  # Claim costs on train: sum of cost rows per (subject, time, claim).
  tmask = train & np.isin(c.role, _TOKEN_ROLES)
  starts = _claim_starts(c, tmask)
  vals = np.where(c.role[tmask] == Role.COST, c.value[tmask], 0).astype(np.float64)
  has_cost = np.add.reduceat((c.role[tmask] == Role.COST).astype(np.int64), starts) > 0 \
      if starts.size else np.zeros(0, bool)
  cost = np.add.reduceat(vals, starts) if starts.size else np.zeros(0)
  key = meds_io.mix64(c.subject[tmask][starts], c.time_us[tmask][starts],
                      c.claim[tmask][starts]) if starts.size else np.zeros(0, np.uint64)
  cost, key = cost[has_cost], key[has_cost]
  k = int(_CTX.config["cost_sample_size"])
  if key.size > k:
    sel = np.argpartition(key, k)[:k]
    cost, key = cost[sel], key[sel]
  dated = np.isin(c.role, _DATED_ROLES)
  max_day = int(c.day[dated].max()) if dated.any() else None
  return {"path": path, "counts": counts, "lobs": lobs, "cost": cost, "cost_key": key,
          "max_day": max_day, "subjects": c.subjects_in_file}


# ---------------------------------------------------------------------------------------------
# Pass 2: records.


@dataclasses.dataclass
class _Stats:
  token_counts: np.ndarray
  cost_sums: np.ndarray
  cost_counts: np.ndarray
  gap_sums: np.ndarray
  gap_counts: np.ndarray


def _spans(starts: list[tuple[int, str]], ends: list[tuple[int, str]], open_end: int
           ) -> list[tuple[int, int, str]]:
  """Enrollment spans [start, end] (inclusive days) with their line of business, merged when
  they touch (gap of at most one day)."""
  ends_by_lob: dict[str, list[int]] = collections.defaultdict(list)
  for d, lob in sorted(ends):
    ends_by_lob[lob].append(d)
  spans = []
  for d, lob in sorted(starts):
    cand = [e for e in ends_by_lob[lob] if e >= d]
    if cand:
      ends_by_lob[lob].remove(cand[0])
    spans.append((d, cand[0] if cand else open_end, lob))
  return spans


def _covered(spans: list[tuple[int, int, str]], lo: int, hi: int) -> bool:
  """Whether the union of spans covers every day in [lo, hi] (one-day gaps tolerated)."""
  pos = lo  # the first day not yet covered
  for s, e, _ in sorted(spans):
    if pos > hi:
      break
    if s <= pos + 1:
      pos = max(pos, e + 1)
  return pos > hi


def _span_lob(spans: list[tuple[int, int, str]], day: int) -> str:
  lob = ""
  for s, e, l in sorted(spans):
    if s <= day <= e:
      lob = l
    elif s <= day and not lob:
      lob = l
  return lob


class _ShardWriters:
  """timeline/ and task/ writers for every split of one input shard."""

  def __init__(self, out: str, index: int, num: int):
    self.writers = {}
    for kind in (records.TIMELINE, records.TASK):
      for split in conventions.SPLITS:
        path = os.path.join(out, kind, records.shard_name(split, index, num))
        self.writers[kind, split] = records.ShardWriter(path).__enter__()

  def write(self, kind: str, split: str, record: dict) -> None:
    self.writers[kind, split].write(record)

  def close(self) -> None:
    for w in self.writers.values():
      w.__exit__(None, None, None)


def _pass2(job: tuple[int, str, _Context]) -> dict[str, Any]:
  index, path, ctx = job
  _set_pass2(ctx)
  tok = _TOKENIZER
  c = _clean(path)
  ctx = _CTX
  code_ids = [tok.code_token_ids(code) for code in c.codes]
  code_cond = np.zeros((max(len(c.codes), 1), conditions.NUM_CONDITIONS), np.uint8)
  code_dx = [""] * len(c.codes)
  for i, info in enumerate(c.infos):
    if info.icd10:
      code_dx[i] = info.icd10.replace(".", "")
      code_cond[i] = conditions.condition_flags([info.icd10])
  v = tok.vocab.size
  stats = _Stats(np.zeros(v, np.int64), np.zeros(len(tok.cost_ids)), np.zeros(len(tok.cost_ids)),
                 np.zeros(len(tok.gap_ids)), np.zeros(len(tok.gap_ids)))
  per_split = {s: {"patients": 0, "tokens": 0, "task_examples": 0,
                   "task_excluded": {r: 0 for r in TASK_EXCLUSIONS}} for s in conventions.SPLITS}
  writers = _ShardWriters(ctx.output_dir, index, ctx.num_shards)
  try:
    bounds = np.flatnonzero(np.diff(c.subject)) + 1
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, c.subject.size]):
      if a == b:
        continue
      split = conventions.SPLITS[c.split[a]]
      timeline, task, excluded = _subject(c, a, b, tok, code_ids, code_cond, code_dx, ctx,
                                          stats if split == conventions.TRAIN else None)
      writers.write(records.TIMELINE, split, timeline)
      st = per_split[split]
      st["patients"] += 1
      st["tokens"] += int(timeline["tokens"].size)
      if task is not None:
        writers.write(records.TASK, split, task)
        st["task_examples"] += 1
      else:
        st["task_excluded"][excluded] += 1
  finally:
    writers.close()
  return {"input_rows": c.input_rows, "dropped": c.dropped, "used_rows": int(c.subject.size),
          "per_split": per_split, "stats": stats, "hashed_subjects": c.hashed_subjects,
          "rows_by_system": _rows_by_system(c)}


def _rows_by_system(c: _Clean) -> dict[str, int]:
  counts = np.bincount(c.code_index, minlength=len(c.codes))
  out: collections.Counter = collections.Counter()
  for i in np.flatnonzero(counts):
    out[c.infos[i].system] += int(counts[i])
  return dict(out)


def _subject(c: _Clean, a: int, b: int, tok: tok_lib.Tokenizer, code_ids, code_cond, code_dx,
             ctx: _Context, stats: Optional[_Stats]):
  """One subject's timeline record, task record (or None) and exclusion reason."""
  role = c.role[a:b]
  day = c.day[a:b]
  tus = c.time_us[a:b]
  claim = c.claim[a:b]
  cidx = c.code_index[a:b]
  value = c.value[a:b]
  subject_id = int(c.subject[a])

  sex = "UNKNOWN"
  g = np.flatnonzero(role == Role.GENDER)
  if g.size:
    sex = c.infos[cidx[g[0]]].value
  bi = np.flatnonzero(role == Role.BIRTH)
  birth = int(day[bi[0]]) if bi.size else None
  di = np.flatnonzero(role == Role.DEATH)
  death = int(day[di[0]]) if di.size else None
  starts = [(int(day[i]), c.infos[cidx[i]].value)
            for i in np.flatnonzero(role == Role.ENROLL_START)]
  ends = [(int(day[i]), c.infos[cidx[i]].value) for i in np.flatnonzero(role == Role.ENROLL_END)]
  ev = np.flatnonzero(np.isin(role, _TOKEN_ROLES))
  first_days = [int(day[ev[0]])] if ev.size else []
  first_days += [starts[0][0]] if starts else []
  start_day = min(first_days)
  data_end = death if death is not None else ctx.data_end_day
  if starts:
    spans = _spans(starts, ends, data_end)
  else:
    spans = [(start_day, data_end, "")]

  def age_at(d: int) -> float:
    return (d - birth) / _DAYS_PER_YEAR if birth is not None else -1.0

  toks: list[int] = [tok.bos_id, tok.sex_ids.get(sex, tok.sex_ids["UNKNOWN"])]
  lob = _span_lob(spans, start_day)
  lob_id = tok.lob_id(lob)
  if lob_id is not None:
    toks.append(lob_id)
  age0 = age_at(start_day)
  if birth is not None:
    toks.append(tok.age_token(math.floor(age0)))
  prefix_len = len(toks)
  days: list[int] = [start_day] * prefix_len
  ages: list[float] = [age0] * prefix_len
  state = {"prev_day": None, "age_int": math.floor(age0) if birth is not None else None}

  def begin_day(d: int) -> None:
    prev = state["prev_day"]
    if prev is not None and d != prev:
      gid = tok.gap_token(d - prev)
      toks.append(gid); days.append(d); ages.append(age_at(d))
      if stats is not None:
        bkt = tok.gap_index(d - prev)
        stats.gap_sums[bkt] += d - prev
        stats.gap_counts[bkt] += 1
    if prev is None or d != prev:
      if birth is not None:
        ai = math.floor(age_at(d))
        if ai != state["age_int"]:
          toks.append(tok.age_token(ai)); days.append(d); ages.append(age_at(d))
          state["age_int"] = ai
      state["prev_day"] = d

  def emit(d: int, unit: list[int]) -> None:
    begin_day(d)
    unit = list(dict.fromkeys(unit))
    toks.extend(unit)
    days.extend([d] * len(unit))
    ages.extend([age_at(d)] * len(unit))

  cur_key = None
  unit: list[int] = []
  cost = 0.0
  has_cost = False
  unit_day = 0
  death_done = False

  def flush() -> None:
    nonlocal unit, cost, has_cost, cur_key
    if cur_key is None:
      return
    if has_cost:
      bn = tok.cost_index(cost)
      unit.append(cost_ids[bn])
      if stats is not None:
        stats.cost_sums[bn] += cost
        stats.cost_counts[bn] += 1
    if unit:
      emit(unit_day, unit)
    unit, cost, has_cost, cur_key = [], 0.0, False, None

  cur_lob = lob
  cost_ids = tok.cost_ids.tolist()
  # Python lists: scalar access to numpy arrays is several times slower in this loop.
  role_l, day_l, cidx_l, value_l = role.tolist(), day.tolist(), cidx.tolist(), value.tolist()
  for r, (ro, t_us, k) in enumerate(zip(role_l, tus.tolist(), claim.tolist())):
    if ro <= Role.COST:
      key = (t_us, k)
      if key != cur_key:
        flush()
        cur_key, unit_day = key, day_l[r]
      if ro == Role.COST:
        cost += value_l[r]
        has_cost = True
      else:
        unit.extend(code_ids[cidx_l[r]])
    elif ro == Role.ENROLL_START:
      new_lob = c.infos[cidx_l[r]].value
      if new_lob != cur_lob and day_l[r] > start_day:
        flush()
        lid = tok.lob_id(new_lob)
        if lid is not None:
          emit(day_l[r], [lid])
        cur_lob = new_lob
    elif ro == Role.DEATH and not death_done:
      flush()
      emit(day_l[r], [tok.death_id])
      death_done = True
  flush()
  toks.append(tok.eos_id); days.append(days[-1]); ages.append(ages[-1])

  tokens_L = np.asarray(toks, np.int32)
  days_L = np.asarray(days, np.int32)
  age_L = np.asarray(ages, np.float32)
  if stats is not None:
    np.add.at(stats.token_counts, tokens_L, 1)
  timeline = {"subject_id": np.int64(subject_id), "tokens": tokens_L, "days": days_L,
              "age": age_L, "prefix_len": np.int32(prefix_len)}

  # Task record at the index date.
  index = ctx.index_day
  target_end = index + conventions.TARGET_WINDOW_DAYS - 1
  if birth is None:
    return timeline, None, "no_birth_date"
  if death is not None and death < index:
    return timeline, None, "died_before_index"
  if not _covered(spans, index - int(ctx.config["min_history_days"]), index - 1):
    return timeline, None, "too_little_history"
  if start_day >= index:
    return timeline, None, "no_history_before_index"
  if ctx.config["require_full_target_year"]:
    if death is not None and death <= target_end:
      if not ctx.config["keep_decedents"]:
        return timeline, None, "died_in_target_year"
      if not _covered(spans, index, death):
        return timeline, None, "not_enrolled_through_target_year"
    elif not _covered(spans, index, target_end):
      return timeline, None, "not_enrolled_through_target_year"

  keep = days_L[:-1] < index       # the last token is EOS: its presence would tell the future
  keep[:prefix_len] = True
  dx = role == Role.DX
  prior, nxt = day < index, (day >= index) & (day <= target_end)
  cond_prior = code_cond[cidx[dx & prior]].max(axis=0) if (dx & prior).any() else \
      np.zeros(conditions.NUM_CONDITIONS, np.uint8)
  cond_next = code_cond[cidx[dx & nxt]].max(axis=0) if (dx & nxt).any() else \
      np.zeros(conditions.NUM_CONDITIONS, np.uint8)
  last_year = dx & prior & (day >= index - conventions.TARGET_WINDOW_DAYS)
  dx_prior = sorted({code_dx[i] for i in cidx[last_year] if code_dx[i]})
  is_cost = role == Role.COST
  cost_next = float(value[is_cost & nxt].astype(np.float64).sum())
  cost_prior = float(value[is_cost & prior & (day >= index - conventions.TARGET_WINDOW_DAYS)]
                     .astype(np.float64).sum())
  lob_idx = _span_lob([s for s in spans if s[0] < index], index - 1)
  task = {
      "subject_id": np.int64(subject_id),
      "tokens": tokens_L[:-1][keep], "days": days_L[:-1][keep], "age": age_L[:-1][keep],
      "prefix_len": np.int32(prefix_len),
      "index_day": np.int32(index),
      "sex": np.int8({"F": 1, "M": 2}.get(sex, 0)),
      "lob": np.int8(conventions.LINES_OF_BUSINESS.index(lob_idx) + 1
                     if lob_idx in conventions.LINES_OF_BUSINESS else 0),
      "age_at_index": np.float32(age_at(index)),
      "cost_next": np.float32(cost_next),
      "cost_next_capped": np.float32(min(cost_next, conventions.COST_CAP)),
      "cost_prior": np.float32(cost_prior),
      "cond_next": cond_next.astype(np.uint8),
      "cond_prior": cond_prior.astype(np.uint8),
      "dx_prior": dx_prior,
  }
  return timeline, task, None


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


def build_dataset(meds_dir: str, output_dir: str,
                  config: Optional[ml_collections.ConfigDict] = None) -> dict[str, Any]:
  """Builds vocab.json, report.json and the timeline/ and task/ shards; returns the report."""
  t0 = time.time()
  config = default_config() if config is None else config
  cfg = _plain(config)
  tok_cfg = tok_lib.tokenizer_config(cfg)
  meds_dir = os.path.abspath(meds_dir)
  output_dir = os.path.abspath(output_dir)
  paths = meds_io.data_files(meds_dir)
  meds_io.dataset_metadata(meds_dir)
  splits = meds_io.read_splits(meds_dir)
  ctx = _Context(cfg, splits, len(paths))
  if min(int(cfg["num_workers"]), len(paths)) > 1:
    _warm_terminology()
  runner = _Runner(ctx, len(paths))
  try:
    return _build(meds_dir, output_dir, cfg, tok_cfg, paths, splits, ctx, runner, t0)
  finally:
    runner.close()


def _warm_terminology() -> None:
  """Loads the code tables once in the parent, so forked workers share them."""
  terminology.icd10cm_valid("E11.9")
  terminology.icd9_to_icd10cm("250.00")


def _build(meds_dir, output_dir, cfg, tok_cfg, paths, splits, ctx, runner, t0) -> dict[str, Any]:
  # Pass 1.
  # Merged as results arrive so the parent holds one bounded cost sample, not one per shard.
  counts: collections.Counter = collections.Counter()
  lobs: set[str] = set()
  k = int(cfg["cost_sample_size"])
  cost, key = np.zeros(0), np.zeros(0, np.uint64)
  subjects, max_days = [], []
  for r in runner.map(_pass1, paths, "pass 1/2: counting codes"):
    counts.update(r["counts"])
    lobs.update(r["lobs"])
    cost, key = np.concatenate([cost, r["cost"]]), np.concatenate([key, r["cost_key"]])
    if key.size > k:
      sel = np.argpartition(key, k)[:k]
      cost, key = cost[sel], key[sel]
    subjects.append({"path": r["path"], "subjects": r["subjects"]})
    if r["max_day"] is not None:
      max_days.append(r["max_day"])
  _check_subjects_in_one_file(subjects)
  del subjects
  if not max_days:
    raise MEDSFormatError(meds_dir, "no dated events in any data file")
  data_end = max(max_days)
  index_day = (meds_io.year_start_day(data_end) if cfg["index_date"] == "auto"
               else meds_io.date_to_day(cfg["index_date"]))

  lobs.discard("")
  vocab = tok_lib.build_vocabulary(tok_cfg, counts, tok_lib.cost_edges_from_sample(
      cost, int(cfg["num_cost_bins"])), lobs)
  os.makedirs(output_dir, exist_ok=True)
  for kind in (records.TIMELINE, records.TASK):
    kind_dir = os.path.join(output_dir, kind)
    if os.path.isdir(kind_dir):
      for f in os.listdir(kind_dir):
        if f.endswith(".array_record"):
          os.remove(os.path.join(kind_dir, f))
  vocab_path = os.path.join(output_dir, records.VOCAB_FILE)
  vocab.save(vocab_path)

  # Pass 2.
  # Open-ended coverage (no enrollment rows, or a START without an END) lasts to the end of the
  # calendar year of the last event: datasets are assumed to cover whole calendar years.
  open_end = meds_io.year_start_day(meds_io.year_start_day(data_end) + 366) - 1
  ctx2 = dataclasses.replace(ctx, splits=None, output_dir=output_dir, vocab_path=vocab_path,
                             index_day=index_day, data_end_day=open_end)
  dropped: collections.Counter = collections.Counter({r: 0 for r in DROP_REASONS})
  input_rows = used_rows = hashed = 0
  per_split = {s: {"patients": 0, "tokens": 0, "task_examples": 0,
                   "task_excluded": {r: 0 for r in TASK_EXCLUSIONS}} for s in conventions.SPLITS}
  rows_by_system: collections.Counter = collections.Counter()
  stats = None
  jobs = [(i, p, ctx2) for i, p in enumerate(paths)]
  for r in runner.map(_pass2, jobs, "pass 2/2: writing records"):
    input_rows += r["input_rows"]
    used_rows += r["used_rows"]
    hashed += r["hashed_subjects"]
    dropped.update(r["dropped"])
    rows_by_system.update(r["rows_by_system"])
    for s, st in r["per_split"].items():
      for k in ("patients", "tokens", "task_examples"):
        per_split[s][k] += st[k]
      for k, n in st["task_excluded"].items():
        per_split[s]["task_excluded"][k] += n
    s2 = r["stats"]
    if stats is None:
      stats = s2
    else:
      for f in dataclasses.fields(_Stats):
        setattr(stats, f.name, getattr(stats, f.name) + getattr(s2, f.name))
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
      "splits_source": ("metadata/subject_splits.parquet" if splits is not None
                        else "hash of subject_id"),
      "subjects_hash_split": hashed,
      "index_date": meds_io.days_to_date(index_day),
      "index_day": index_day,
      "data_end_date": meds_io.days_to_date(data_end),
      "vocab_size": vocab.size,
      "patients": {s: per_split[s]["patients"] for s in conventions.SPLITS},
      "tokens": {s: per_split[s]["tokens"] for s in conventions.SPLITS},
      "task_examples": {s: per_split[s]["task_examples"] for s in conventions.SPLITS},
      "task_exclusions": {s: per_split[s]["task_excluded"] for s in conventions.SPLITS},
      "config": cfg,
      "elapsed_s": round(time.time() - t0, 2),
  }
  if input_rows != used_rows + sum(dropped.values()):
    raise AssertionError(f"row accounting is off: {input_rows} != {used_rows} + "
                         f"{sum(dropped.values())}")
  with open(os.path.join(output_dir, records.REPORT_FILE), "w") as f:
    json.dump(report, f, indent=1, sort_keys=True)
    f.write("\n")
  return report
