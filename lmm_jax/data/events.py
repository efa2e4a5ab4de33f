"""Cleaned events: the rows of whole subjects after cleaning (`clean.clean`), and one subject's view.

`CleanRows` holds the used rows of a chunk of whole subjects, sorted by (subject, time, claim,
role); `CleanRows.subjects(open_end)` gives each subject's `SubjectEvents`: its rows plus the facts
the timeline and the labels share (sex, birth and death days, enrollment coverage, first day).
Light on purpose (numpy only): `labels.py`, and through it `records.py`, import it.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterator, Optional, TypeVar

import numpy as np

from lmm_jax.data.code_systems import Role

TOKEN_ROLES = (Role.CLAIM, Role.POS, Role.DX, Role.PROC, Role.DRUG, Role.OTHER, Role.COST)
DATED_ROLES = TOKEN_ROLES + (Role.ENROLL_START, Role.ENROLL_END, Role.DEATH)
DAYS_PER_YEAR = 365.25

T = TypeVar("T")
Span = tuple[int, int, str]   # enrollment [start, end] (inclusive days) and its line of business


@dataclasses.dataclass(eq=False)
class CodeTable:
  """The distinct code strings of a chunk and their analysis (tokenizer.CodeInfo), with tables
  derived from them once per chunk (`derived`)."""
  codes: list[str]
  infos: list[Any]
  _derived: dict = dataclasses.field(default_factory=dict, repr=False)

  def derived(self, fn: Callable[["CodeTable"], T]) -> T:
    """fn(self), computed once per chunk (e.g. a label's per-code condition flags)."""
    if fn not in self._derived:
      self._derived[fn] = fn(self)
    return self._derived[fn]


@dataclasses.dataclass
class SubjectEvents:
  """One subject's used rows (E of them, sorted by time, claim, role) and the facts derived."""
  subject_id: int
  split: int                 # index into conventions.SPLITS
  role: np.ndarray           # int8[E] Role
  day: np.ndarray            # int64[E] days since 1970-01-01 (NULL_TIME for the static sex row)
  time_us: np.ndarray        # int64[E]
  claim: np.ndarray          # int64[E] claim id index (-1 none)
  code_index: np.ndarray     # int32[E] into codes
  value: np.ndarray          # float32[E] numeric_value
  codes: CodeTable
  sex: str                   # F / M / UNKNOWN
  birth: Optional[int]       # day
  death: Optional[int]       # day
  spans: list[Span]          # coverage (see enrollment_spans)
  start_day: int             # first claim or enrollment start

  def age_at(self, day: int) -> float:
    """Age in years at `day` (-1 without a birth date)."""
    return (day - self.birth) / DAYS_PER_YEAR if self.birth is not None else -1.0


@dataclasses.dataclass
class CleanRows:
  """The used rows of a chunk of whole subjects sorted by (subject, time, claim, role), plus the
  chunk's accounting."""
  path: str
  input_rows: int
  dropped: collections.Counter     # rows dropped, by clean.DROP_REASONS
  subject_ids: np.ndarray          # int64 unique subject ids of the chunk (for the one-file check)
  subject: np.ndarray
  split: np.ndarray                # int8 index into conventions.SPLITS
  time_us: np.ndarray
  day: np.ndarray
  role: np.ndarray                 # int8 Role
  code_index: np.ndarray
  value: np.ndarray
  claim: np.ndarray
  codes: CodeTable
  hashed_subjects: int             # subjects whose split came from the hash of their id
  text_index: Optional[np.ndarray] = None   # int32 into texts (-1: no text_value); None: none
  texts: list[str] = dataclasses.field(default_factory=list)   # distinct text_value strings
  numeric_texts: int = 0           # rows whose value was read from their text (clean.clean)

  def subjects(self, open_end: int) -> Iterator[SubjectEvents]:
    """Every subject's events, in order; open-ended coverage lasts to `open_end` (or death)."""
    bounds = np.flatnonzero(np.diff(self.subject)) + 1
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, self.subject.size]):
      if a < b:
        yield subject_events(self, int(a), int(b), open_end)


def subject_events(c: CleanRows, a: int, b: int, open_end: int) -> SubjectEvents:
  """The events of rows [a, b) of c (one subject)."""
  role, day, cidx = c.role[a:b], c.day[a:b], c.code_index[a:b]
  infos = c.codes.infos
  sex = "UNKNOWN"
  g = np.flatnonzero(role == Role.GENDER)
  if g.size:
    sex = infos[cidx[g[0]]].value
  bi = np.flatnonzero(role == Role.BIRTH)
  birth = int(day[bi[0]]) if bi.size else None
  di = np.flatnonzero(role == Role.DEATH)
  death = int(day[di[0]]) if di.size else None
  starts = [(int(day[i]), infos[cidx[i]].value) for i in np.flatnonzero(role == Role.ENROLL_START)]
  ends = [(int(day[i]), infos[cidx[i]].value) for i in np.flatnonzero(role == Role.ENROLL_END)]
  ev = np.flatnonzero(np.isin(role, TOKEN_ROLES))
  first_days = [int(day[ev[0]])] if ev.size else []
  first_days += [starts[0][0]] if starts else []
  start_day = min(first_days)   # cleaning dropped subjects with neither
  data_end = death if death is not None else open_end
  spans = enrollment_spans(starts, ends, data_end) if starts else [(start_day, data_end, "")]
  return SubjectEvents(int(c.subject[a]), int(c.split[a]), role, day, c.time_us[a:b],
                       c.claim[a:b], cidx, c.value[a:b], c.codes, sex, birth, death, spans,
                       start_day)


def enrollment_spans(starts: list[tuple[int, str]], ends: list[tuple[int, str]], open_end: int
                     ) -> list[Span]:
  """Coverage spans [start, end] (inclusive days) with their line of business: each START is
  paired with the earliest unused END of the same line of business on or after it; a START
  without one lasts to open_end. Spans are not merged (see `covered`)."""
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


def covered(spans: list[Span], lo: int, hi: int) -> bool:
  """Whether the union of spans covers every day in [lo, hi] (one-day gaps tolerated)."""
  pos = lo  # the first day not yet covered
  for s, e, _ in sorted(spans):
    if pos > hi:
      break
    if s <= pos + 1:
      pos = max(pos, e + 1)
  return pos > hi


def lob_at(spans: list[Span], day: int) -> str:
  """The line of business of the latest span covering `day`, else of the first span started by
  then ("" if none)."""
  lob = ""
  for s, e, l in sorted(spans):
    if s <= day <= e:
      lob = l
    elif s <= day and not lob:
      lob = l
  return lob
