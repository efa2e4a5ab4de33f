"""Cleaning: the rows of a chunk of whole subjects -> their used rows, with drops counted by reason.

Every rule looks at one row or at one subject's rows, so cleaning a file in chunks of whole
subjects (`meds_io.iter_shard`) gives the same rows and counts as cleaning it at once.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Mapping, Optional, Sequence

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
    "non_finite_value",            # numeric_value is +inf or -inf (NaN reads as null)
    "cost_above_cap",              # a cost row above config.max_claim_cost dollars
    "time_out_of_range",           # a dated row before config.min_date or after config.max_date
)


@dataclasses.dataclass(frozen=True)
class Limits:
  """What a value may be before its row is dropped as absurd (the builder config's knobs)."""
  max_claim_cost: float = float("inf")    # dollars per cost row
  min_day: int = np.iinfo(np.int64).min   # days since 1970-01-01, inclusive
  max_day: int = np.iinfo(np.int64).max

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "Limits":
    """max_claim_cost, min_date and max_date of the build config; an error names a bad one."""
    cap = float(config["max_claim_cost"])
    if not cap > 0:
      raise ValueError(f"max_claim_cost={config['max_claim_cost']} must be positive")
    days = []
    for key in ("min_date", "max_date"):
      try:
        days.append(int(np.datetime64(str(config[key]), "D").astype(np.int64)))
      except ValueError as e:
        raise ValueError(f"{key} must be 'YYYY-MM-DD', got {config[key]!r}") from e
    if days[0] > days[1]:
      raise ValueError(f"min_date={config['min_date']} is after max_date={config['max_date']}")
    return cls(cap, days[0], days[1])


# A text_value read as a number (numeric_text_values): a plain decimal, nothing else ("120/80",
# "1,000", "<5", "inf" and "nan" are not).
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def text_numbers(texts: Sequence[str]) -> np.ndarray:
  """float32 per text: its value when it is a plain finite decimal number, else NaN."""
  out = np.full(len(texts), np.nan, np.float32)
  for i, t in enumerate(texts):
    if _NUMBER.match(t):
      out[i] = np.float32(float(t))
  out[~np.isfinite(out)] = np.nan   # beyond the float32 range
  return out


def clean(rows: meds_io.ShardRows, analyzer: tok_lib.CodeAnalyzer,
          splits: Optional[meds_io.Splits], hash_split_fractions: Sequence[float],
          limits: Limits = Limits(), numeric_texts: bool = True) -> events.CleanRows:
  """The used rows of `rows` (whole subjects) sorted by (subject, time, claim, role).

  numeric_texts: a generic (LAB / OTHER) row with a null numeric_value and a text_value that is a
  plain number takes that number as its value (ETLs that keep e.g. height, weight and BMI as text).

  Rows with absurd values (`limits`) are dropped before birth and death days are read, so one row
  dated 9999-12-31 moves neither them nor the index date.

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
  day = rows.day
  dated = ~rows.time_null
  mark(dated & ~rows.time_bad & ((day < limits.min_day) | (day > limits.max_day)),
       "time_out_of_range")
  mark(role == Role.COST_OTHER, "other_cost_measure")
  mark(np.isinf(rows.value), "non_finite_value")
  mark((role == Role.COST) & np.isnan(rows.value), "cost_without_value")
  mark((role == Role.COST) & (rows.value < 0), "negative_cost")
  mark((role == Role.COST) & (rows.value > limits.max_claim_cost), "cost_above_cap")

  # Birth and death days per subject (from rows not dropped so far).
  ok = reason < 0
  birth = np.full(uniq.size, np.iinfo(np.int64).max, np.int64)
  death = np.full(uniq.size, np.iinfo(np.int64).max, np.int64)
  np.minimum.at(birth, inverse[ok & (role == Role.BIRTH)], day[ok & (role == Role.BIRTH)])
  np.minimum.at(death, inverse[ok & (role == Role.DEATH)], day[ok & (role == Role.DEATH)])
  birth = np.where(birth == np.iinfo(np.int64).max, np.iinfo(np.int64).min, birth)
  mark(dated & (day < birth[inverse]), "event_before_birth")
  mark(dated & (day > death[inverse]), "event_after_death")
  ok = reason < 0
  has_event = np.zeros(uniq.size, bool)
  ev = ok & np.isin(role, events.TOKEN_ROLES + (Role.ENROLL_START,))
  has_event[inverse[ev]] = True
  mark(~has_event[inverse], "subject_without_events")

  keep = np.flatnonzero(reason < 0)
  value, text_index = rows.value, rows.text_index
  from_text = np.zeros(n, bool)
  if numeric_texts and rows.texts:
    number_T = text_numbers(rows.texts)
    from_text = (role == Role.OTHER) & np.isnan(value) & (text_index >= 0)
    from_text[from_text] = np.isfinite(number_T[text_index[from_text]])
    value = np.where(from_text, number_T[np.maximum(text_index, 0)], value).astype(np.float32)
    text_index = np.where(from_text, -1, text_index).astype(np.int32)
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
      day[order], role[order], rows.code_index[order], value[order], rows.claim[order],
      events.CodeTable(rows.codes, infos), hashed, text_index[order], rows.texts,
      int(from_text[keep].sum()))
