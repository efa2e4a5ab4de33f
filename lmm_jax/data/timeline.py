"""Timeline tokenization: one subject's cleaned events -> tokens, days and ages (docs/data.md).

    code_ids = code_token_ids(tok, chunk.codes)            # once per chunk of subjects
    fields = tokenize(events, tok, code_ids, stats)        # tokens, days, age, prefix_len
    inputs = history_at(fields, index_day, tok)            # the task record's history + anchor
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import numpy as np

from lmm_jax.data import events as events_lib
from lmm_jax.data import records
from lmm_jax.data import tokenizer as tok_lib
from lmm_jax.data.code_systems import Role


@dataclasses.dataclass
class Stats:
  """Train-timeline counts that finish the vocabulary (`tokenizer.finalize`); summed over files."""
  token_counts: np.ndarray
  cost_sums: np.ndarray
  cost_counts: np.ndarray
  gap_sums: np.ndarray
  gap_counts: np.ndarray

  @classmethod
  def zeros(cls, tok: tok_lib.Tokenizer) -> "Stats":
    return cls(np.zeros(tok.vocab.size, np.int64), np.zeros(len(tok.cost_ids)),
               np.zeros(len(tok.cost_ids)), np.zeros(len(tok.gap_ids)), np.zeros(len(tok.gap_ids)))

  def __add__(self, other: "Stats") -> "Stats":
    return Stats(*(getattr(self, f.name) + getattr(other, f.name)
                   for f in dataclasses.fields(Stats)))


def code_token_ids(tok: tok_lib.Tokenizer, codes: events_lib.CodeTable) -> list[tuple[int, ...]]:
  """The token ids of every distinct code of a chunk."""
  return [tok.code_token_ids(code) for code in codes.codes]


def tokenize(ev: events_lib.SubjectEvents, tok: tok_lib.Tokenizer,
             code_ids: list[tuple[int, ...]], stats: Optional[Stats]) -> dict[str, Any]:
  """The timeline fields of one subject (tokens, days, age: one per token; prefix_len).

  The demographic prefix, then per claim its codes and cost bin, time-gap tokens between event
  days, an age token when the integer age changes, line-of-business changes, death, EOS. `stats`
  (train subjects only) accumulates token counts and the cost / gap sums.
  """
  birth, start_day = ev.birth, ev.start_day
  age_at = ev.age_at

  toks: list[int] = [tok.bos_id, tok.sex_ids.get(ev.sex, tok.sex_ids["UNKNOWN"])]
  lob = events_lib.lob_at(ev.spans, start_day)
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
  infos = ev.codes.infos
  # Python lists: scalar access to numpy arrays is several times slower in this loop.
  role_l, day_l, cidx_l, value_l = (ev.role.tolist(), ev.day.tolist(), ev.code_index.tolist(),
                                    ev.value.tolist())
  for r, (ro, t_us, k) in enumerate(zip(role_l, ev.time_us.tolist(), ev.claim.tolist())):
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
      new_lob = infos[cidx_l[r]].value
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
  if stats is not None:
    np.add.at(stats.token_counts, tokens_L, 1)
  return {"tokens": tokens_L, "days": np.asarray(days, np.int32),
          "age": np.asarray(ages, np.float32), "prefix_len": np.int32(prefix_len)}


def history_at(timeline: dict[str, Any], day: int, tok: tok_lib.Tokenizer,
               through_day: bool = False) -> dict[str, np.ndarray]:
  """The history of a timeline as seen at `day` (a prediction time), ending with its anchor.

  The sequence fields (tokens, days, age) of the tokens strictly before `day` (the demographic
  prefix always kept; a final EOS never, since its presence would tell that nothing follows),
  then the anchor at `day`: the time-gap token of the days since the last kept token (when
  >= 1) and the AGE token of the age at `day` (when the birth date is known, i.e. ages >= 0).
  The anchor's days are `day`; fine-tuning pools there and zero-shot sampling starts there.
  Independent of any calendar: any per-subject prediction time works. `through_day` keeps the
  tokens ON `day` too: a MEDS prediction time's history is cut by event time before tokenizing, so
  everything left (on or before the prediction day) belongs to it.
  """
  tokens = np.asarray(timeline["tokens"])
  n = len(tokens) - (1 if len(tokens) and int(tokens[-1]) == tok.eos_id else 0)
  days = np.asarray(timeline["days"])[:n]
  keep = days <= day if through_day else days < day
  keep[:int(timeline["prefix_len"])] = True
  out = {k: np.asarray(timeline[k])[:n][keep] for k in records.SEQUENCE_FIELDS}
  last_day = int(out["days"][-1]) if len(out["days"]) else int(day)
  last_age = float(out["age"][-1]) if len(out["age"]) else -1.0
  age_at_day = (last_age + (int(day) - last_day) / events_lib.DAYS_PER_YEAR
                if last_age >= 0 else -1.0)
  anchor: list[int] = []
  if int(day) - last_day >= 1:
    anchor.append(tok.gap_token(int(day) - last_day))
  if age_at_day >= 0:
    anchor.append(tok.age_token(math.floor(age_at_day)))
  # Other sequence fields (none today) get zeros at the anchor.
  fill = {"tokens": anchor, "days": [day] * len(anchor), "age": [age_at_day] * len(anchor)}
  return {k: np.concatenate([v, np.asarray(fill.get(k, [0] * len(anchor)), v.dtype)])
          for k, v in out.items()}
