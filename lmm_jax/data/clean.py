"""Cleaning: the rows of a chunk of whole subjects -> their used rows, with drops counted by reason.

Every rule looks at one row or at one subject's rows, so cleaning a file in chunks of whole
subjects (`meds_io.iter_shard`) gives the same rows and counts as cleaning it at once.
"""

from __future__ import annotations

import collections
from typing import Optional, Sequence

import numpy as np

from lmm_jax.data import code_systems as cs
from lmm_jax.data import events
from lmm_jax.data import meds_io
from lmm_jax.data import tokenizer as tok_lib
from lmm_jax.data.code_systems import Role

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


def clean(rows: meds_io.ShardRows, analyzer: tok_lib.CodeAnalyzer,
          splits: Optional[meds_io.Splits], hash_split_fractions: Sequence[float]
          ) -> events.CleanRows:
  """The used rows of `rows` (whole subjects) sorted by (subject, time, claim, role).

  Subjects keep the order of their first row; a subject's split comes from `splits` when it
  lists the subject, else from the hash of its id.
  """
  n = rows.num_rows
  infos = [analyzer.analyze(c) for c in rows.codes]
  code_role = np.array([i.role for i in infos], np.int8).reshape(-1)
  code_static_ok = np.array([cs.is_static_allowed(i.system) for i in infos], bool).reshape(-1)
  code_coded = np.array([i.system in (cs.LAB, cs.OTHER) for i in infos], bool).reshape(-1)
  role = code_role[rows.code_index] if n else np.zeros(0, np.int8)

  # Splits: metadata when present (unlisted subjects are hashed), else hashed on subject_id.
  uniq, first, inverse = np.unique(rows.subject_id, return_index=True, return_inverse=True)
  if splits is not None:
    sub_split = splits.lookup(uniq)
    unlisted = sub_split == -1
    sub_split[unlisted] = meds_io.hash_split(uniq[unlisted], hash_split_fractions)
    hashed = int(unlisted.sum())
  else:
    sub_split, hashed = meds_io.hash_split(uniq, hash_split_fractions), int(uniq.size)
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
  ev = ok & np.isin(role, events.TOKEN_ROLES + (Role.ENROLL_START,))
  has_event[inverse[ev]] = True
  mark(~has_event[inverse], "subject_without_events")

  keep = np.flatnonzero(reason < 0)
  time_sort = np.where(rows.time_null, np.iinfo(np.int64).min, rows.time_us)
  # Subjects in the order of their first row (ascending ids in a MEDS file sorted by subject).
  rank = np.empty(uniq.size, np.int64)
  rank[np.argsort(first, kind="stable")] = np.arange(uniq.size)
  order = keep[np.lexsort((keep, role[keep], rows.claim[keep], time_sort[keep],
                           rank[inverse[keep]]))]
  counts = np.bincount(reason[reason >= 0], minlength=len(DROP_REASONS))
  dropped = collections.Counter({r: int(c) for r, c in zip(DROP_REASONS, counts)})
  return events.CleanRows(
      rows.path, n, dropped, uniq, rows.subject_id[order], split[order], time_sort[order],
      day[order], role[order], rows.code_index[order], rows.value[order], rows.claim[order],
      events.CodeTable(rows.codes, infos), hashed)
