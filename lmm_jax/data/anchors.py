"""Prediction-time anchors inside pretraining timelines.

A task record's history ends with the anchor of `timeline.history_at`: the time-gap token of the
days since the last event and the AGE token of the age at the prediction day. Zero-shot sampling
starts right after it. So that pretraining sees that pattern and what follows it, a training
timeline can get one anchor at a random day d (`insert_anchor`): the tokens strictly before d and
the anchor exactly as `history_at(timeline, d)` makes them, then the rest of the timeline as it
would continue from the anchor: the first later event day's gap token measured from d (none when
the event is on d), and its AGE token only if the age there differs from the anchor's.

Random days (rather than calendar-year boundaries) because prediction times are per member
(MEDS tasks, any index day), and because an anchor at every year boundary would put several
anchors in every timeline, a pattern no task history has (it has exactly one, at its end).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from lmm_jax.data import events as events_lib
from lmm_jax.data import records
from lmm_jax.data import tokenizer as tok_lib


@dataclasses.dataclass(frozen=True)
class AnchorTokens:
  """What inserting an anchor needs of the tokenizer (picklable for grain worker processes)."""
  gap_bounds: tuple[int, ...]
  gap_ids: tuple[int, ...]
  age_ids: tuple[int, ...]
  eos_id: int

  @classmethod
  def from_tokenizer(cls, tok: tok_lib.Tokenizer) -> "AnchorTokens":
    return cls(tuple(int(b) for b in tok.gap_bounds), tuple(int(i) for i in tok.gap_ids),
               tuple(int(i) for i in tok.age_ids), int(tok.eos_id))

  def gap_token(self, gap_days: int) -> int:
    return self.gap_ids[int(np.searchsorted(self.gap_bounds, gap_days, side="right")) - 1]

  def age_token(self, age_years: int) -> int:
    return self.age_ids[min(max(int(age_years), 0), len(self.age_ids) - 1)]


def insert_anchor(rec: dict[str, Any], day: int, anchor: AnchorTokens) -> dict[str, Any]:
  """`rec` (a timeline record) with the prediction-time anchor at `day` (see the module doc)."""
  extra = [f for f in records.SEQUENCE_FIELDS if f not in ("tokens", "days", "age")]
  if extra:
    raise ValueError(f"insert_anchor: sequence field(s) {extra} have no anchor value")
  tokens = np.asarray(rec["tokens"])
  days = np.asarray(rec["days"])
  ages = np.asarray(rec["age"], np.float32)
  prefix = int(rec["prefix_len"])
  n = len(tokens)
  # Cut where history_at cuts: the first non-prefix token on or after `day`.
  cut = prefix + int(np.searchsorted(days[prefix:], day, side="left"))
  last = cut - 1
  last_day, last_age = int(days[last]), float(ages[last])
  age_at_day = last_age + (day - last_day) / events_lib.DAYS_PER_YEAR if last_age >= 0 else -1.0
  ins_tokens: list[int] = []
  if day - last_day >= 1:
    ins_tokens.append(anchor.gap_token(day - last_day))
  if age_at_day >= 0:
    ins_tokens.append(anchor.age_token(math.floor(age_at_day)))
  ins_days = [day] * len(ins_tokens)
  ins_ages = [age_at_day] * len(ins_tokens)
  # The continuation's first event day: re-measure its gap from `day`, and keep its AGE token
  # only if the age changed since the anchor. The gap and AGE ids are recognized by position
  # (tokenize emits [gap][AGE]? first on a new event day), compared against the tokenizer's ids.
  rest = cut
  gap_ids, age_ids = set(anchor.gap_ids), set(anchor.age_ids)
  head_tokens: list[int] = []
  if rest < n and int(tokens[rest]) != anchor.eos_id:
    e = int(days[rest])
    if int(tokens[rest]) in gap_ids:   # gap(e - previous day): re-measured from `day` below
      rest += 1
    if e - day >= 1:
      head_tokens.append(anchor.gap_token(e - day))
    if rest < n and int(tokens[rest]) in age_ids and int(days[rest]) == e:
      if age_at_day < 0 or math.floor(float(ages[rest])) != math.floor(age_at_day):
        head_tokens.append(int(tokens[rest]))
      rest += 1
    head_days = [e] * len(head_tokens)
    head_ages = [float(ages[min(rest, n - 1)])] * len(head_tokens)
  else:
    head_days, head_ages = [], []
  out = dict(rec)
  out["tokens"] = np.concatenate([tokens[:cut], np.asarray(ins_tokens + head_tokens, tokens.dtype),
                                  tokens[rest:]])
  out["days"] = np.concatenate([days[:cut], np.asarray(ins_days + head_days, days.dtype),
                                days[rest:]])
  out["age"] = np.concatenate([ages[:cut], np.asarray(ins_ages + head_ages, np.float32),
                               ages[rest:]])
  return out


def random_anchor_day(rec: dict[str, Any], rng: np.random.Generator) -> int | None:
  """A uniformly random day in (first event day, last event day], or None without two days."""
  days = np.asarray(rec["days"])[int(rec["prefix_len"]):]
  if len(days) < 2 or int(days[-1]) <= int(days[0]):
    return None
  return int(rng.integers(int(days[0]) + 1, int(days[-1]) + 1))
