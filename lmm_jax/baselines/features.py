"""Task records as columns, and the tabular features of the baselines.

Every feature is computed from the task record, which holds only events strictly before the index
date, so no baseline can see the target window.
  demographics   age at index, sex and line of business (one-hot)
  prior cost     allowed dollars in the year before the index date (and its log1p)
  kind counts    tokens of each TokenKind over the whole history and over the last year
  activity       history length in days, distinct event days in the last year
  prevalent      the 22 chronic-condition flags coded before the index date (cond_prior)
  code counts    counts of the most frequent tokens (document frequency on the train split)
  HCCs           CMS-HCC V28 indicators and risk score (lmm_jax.baselines.hcc)
  recency        what happened lately (`recency`; days are counted back from the index date, an
                 event on day index - d is in the last W days when d <= W):
                   claims_{W}d, cost_{W}d, inpatient_{W}d, er_{W}d, fill_{W}d  for W = 90, 180, 365:
                     claims (CLAIM// tokens), allowed dollars (the mean dollars of the COST//BIN
                     tokens), inpatient stays, ER visits and pharmacy fills in the last W days
                   days_since_{claim,inpatient,er,fill}: days since the last such claim
                     (NO_EVENT_DAYS when there is none in the history, and the cap)
                   cost_prior_half_year: dollars in days 183-365 before the index date
                   cost_trend: log1p(dollars of the last 182 days) - log1p(cost_prior_half_year)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tqdm

from lmm_jax import conditions
from lmm_jax import conventions
from lmm_jax.conventions import TokenKind
from lmm_jax.data import records

AGE_BANDS = (0, 18, 35, 45, 55, 65, 75, 85)  # lower edges; the last band is open
AGE_BAND_NAMES = ("0-17", "18-34", "35-44", "45-54", "55-64", "65-74", "75-84", "85+")
NUM_KINDS = len(TokenKind)
# Kinds whose frequent tokens become count features (demographic and time tokens are covered by
# the demographic and activity features).
CODE_KINDS = (TokenKind.DIAGNOSIS, TokenKind.PROCEDURE, TokenKind.DRUG, TokenKind.COST,
              TokenKind.CLAIM, TokenKind.DEATH, TokenKind.OTHER)
RECENCY_WINDOWS = (90, 180, 365)   # days before the index date
HALF_YEAR = 182
NO_EVENT_DAYS = 3650               # days_since_* of a member without such a claim (and the cap)
# Claim types whose recency is a feature: name -> the claim-type token.
RECENT_CLAIMS = {"inpatient": "CLAIM//INPATIENT", "er": "CLAIM//EMERGENCY",
                 "fill": "CLAIM//PHARMACY"}
_RECENCY_CHUNK = 2048              # members per vectorized chunk (bounds the flat arrays' memory)


class DegenerateDataError(ValueError):
  """A baseline cannot be fitted or evaluated on this data; the one-line message says why."""


@dataclasses.dataclass
class TaskData:
  """One split's task records as columns (N members)."""
  split: str
  subject_id: np.ndarray      # int64[N]
  index_day: np.ndarray       # int32[N]
  sex: np.ndarray             # int8[N]: 0 unknown, 1 female, 2 male
  lob: np.ndarray             # int8[N]: 0 unknown, then conventions.LINES_OF_BUSINESS
  age: np.ndarray             # float32[N] at index (-1 unknown)
  cost_next: np.ndarray       # float64[N]
  cost_next_capped: np.ndarray
  cost_prior: np.ndarray
  cond_next: np.ndarray       # uint8[N, C]
  cond_prior: np.ndarray      # uint8[N, C]
  dx_prior: list[list[str]]   # dotless ICD-10-CM codes of the year before index
  tokens: list[np.ndarray]    # int32[L_i]
  days: list[np.ndarray]      # int32[L_i]

  def __len__(self) -> int:
    return int(self.subject_id.size)

  def subset(self, n: int) -> "TaskData":
    """The first n members (for benchmarks)."""
    cut = lambda x: x[:n]
    return TaskData(self.split, *(cut(getattr(self, f.name))
                                  for f in dataclasses.fields(self) if f.name != "split"))


def load_split(data_dir: str, split: str, progress: bool = True) -> TaskData:
  """Reads every task record of a split into columns."""
  schema = records.schema(records.TASK)
  cols = {f.name: [] for f in schema}
  for rec in tqdm.tqdm(records.read_records(data_dir, records.TASK, split),
                       desc=f"read {split}", disable=not progress, unit=" members"):
    missing = [k for k in cols if k not in rec]
    if missing:
      raise ValueError(f"{data_dir}/task/{split}: a record lacks field(s) {missing}")
    for k in cols:
      cols[k].append(rec[k])
  n = len(cols["subject_id"])
  if n == 0:
    raise ValueError(f"{data_dir}/task/{split}: no task records")
  for f in schema:
    if f.shape and None not in f.shape:   # fixed-length vectors, e.g. the condition flags
      shapes = {np.shape(x) for x in cols[f.name]}
      if shapes != {f.shape}:
        raise ValueError(f"{data_dir}/task/{split}: field {f.name} has shape(s) "
                         f"{sorted(shapes)}, expected {f.shape}")
  f64 = lambda k: np.asarray(cols[k], np.float64)
  return TaskData(
      split=split,
      subject_id=np.asarray(cols["subject_id"], np.int64),
      index_day=np.asarray(cols["index_day"], np.int32),
      sex=np.asarray(cols["sex"], np.int8),
      lob=np.asarray(cols["lob"], np.int8),
      age=np.asarray(cols["age_at_index"], np.float32),
      cost_next=f64("cost_next"), cost_next_capped=f64("cost_next_capped"),
      cost_prior=f64("cost_prior"),
      cond_next=np.stack(cols["cond_next"]).astype(np.uint8),
      cond_prior=np.stack(cols["cond_prior"]).astype(np.uint8),
      dx_prior=[list(x) for x in cols["dx_prior"]],
      tokens=[np.asarray(x, np.int32) for x in cols["tokens"]],
      days=[np.asarray(x, np.int32) for x in cols["days"]])


def age_band(age) -> np.ndarray:
  """int[N] index into AGE_BAND_NAMES (unknown ages, < 0, fall in the first band)."""
  return np.clip(np.searchsorted(AGE_BANDS, np.asarray(age), side="right") - 1, 0,
                 len(AGE_BANDS) - 1)


def demographics(data: TaskData) -> tuple[np.ndarray, list[str]]:
  """float32[N, D]: age, age known, sex one-hot, line-of-business one-hot."""
  cols = [np.maximum(data.age, 0), (data.age >= 0).astype(np.float32)]
  names = ["age", "age_known"]
  for value, name in enumerate(("unknown", "female", "male")):
    cols.append((data.sex == value).astype(np.float32))
    names.append(f"sex_{name}")
  for value, name in enumerate(("unknown",) + conventions.LINES_OF_BUSINESS):
    cols.append((data.lob == value).astype(np.float32))
    names.append(f"lob_{name.lower()}")
  return np.stack(cols, axis=1).astype(np.float32), names


def activity(data: TaskData, kinds: np.ndarray) -> tuple[np.ndarray, list[str]]:
  """float32[N, 2K+2]: token counts per kind (all history, last year), history days, event days."""
  n = len(data)
  out = np.zeros((n, 2 * NUM_KINDS + 2), np.float32)
  for i, (tok, day) in enumerate(zip(data.tokens, data.days)):
    k = kinds[tok]
    recent = day >= data.index_day[i] - conventions.TARGET_WINDOW_DAYS
    out[i, :NUM_KINDS] = np.bincount(k, minlength=NUM_KINDS)[:NUM_KINDS]
    out[i, NUM_KINDS:2 * NUM_KINDS] = np.bincount(k[recent], minlength=NUM_KINDS)[:NUM_KINDS]
    if day.size:
      out[i, -2] = data.index_day[i] - day.min()
      out[i, -1] = np.unique(day[recent]).size
  names = ([f"n_{k.name.lower()}" for k in TokenKind] +
           [f"n_{k.name.lower()}_last_year" for k in TokenKind] + ["history_days", "event_days"])
  return out, names


def recency_names() -> list[str]:
  names = []
  for w in RECENCY_WINDOWS:
    names += [f"claims_{w}d", f"cost_{w}d"] + [f"{c}_{w}d" for c in RECENT_CLAIMS]
  names += ["days_since_claim"] + [f"days_since_{c}" for c in RECENT_CLAIMS]
  return names + ["cost_prior_half_year", "cost_trend"]


def claim_type_ids(tokens: Sequence[str]) -> dict[str, int]:
  """RECENT_CLAIMS name -> token id (-1 when the vocabulary lacks that claim type)."""
  ids = {t: i for i, t in enumerate(tokens)}
  return {name: ids.get(tok, -1) for name, tok in RECENT_CLAIMS.items()}


def _group_min(group_K: np.ndarray, value_K: np.ndarray, num_groups: int,
               empty: int) -> np.ndarray:
  """Minimum of value per group (groups sorted ascending), capped at `empty` (also the value of
  a group without entries)."""
  out = np.full(num_groups, empty, np.int64)
  if group_K.size:
    starts = np.flatnonzero(np.r_[True, group_K[1:] != group_K[:-1]])
    out[group_K[starts]] = np.minimum(np.minimum.reduceat(value_K, starts), empty)
  return out


def recency(data: TaskData, kinds: np.ndarray, cost_value: np.ndarray,
            claim_ids: dict[str, int]) -> tuple[np.ndarray, list[str]]:
  """float32[N, R] recency features (module docstring), vectorized over chunks of members.

  kinds and cost_value are per token id (Vocabulary.kinds / .cost_value); claim_ids from
  `claim_type_ids`.
  """
  names = recency_names()
  n = len(data)
  out = np.zeros((n, len(names)), np.float32)
  kinds = np.asarray(kinds)
  is_claim = kinds == TokenKind.CLAIM
  value = np.where(kinds == TokenKind.COST, np.asarray(cost_value, np.float64), 0.0)
  types = list(RECENT_CLAIMS)
  for start in range(0, n, _RECENCY_CHUNK):
    stop = min(start + _RECENCY_CHUNK, n)
    m = stop - start
    lengths = np.fromiter((t.size for t in data.tokens[start:stop]), np.int64, m)
    tok_T = np.concatenate(data.tokens[start:stop])
    member_T = np.repeat(np.arange(m), lengths)
    back_T = (data.index_day[start:stop][member_T].astype(np.int64) -
              np.concatenate(data.days[start:stop]))      # days before the index, >= 1
    keep = is_claim[tok_T] | (value[tok_T] != 0)         # only claim and cost tokens matter
    tok_T, member_T, back_T = tok_T[keep], member_T[keep], back_T[keep]
    dollars_T = value[tok_T]
    claim_T = is_claim[tok_T]
    type_T = {c: tok_T == claim_ids.get(c, -1) for c in types}
    count = lambda w: np.bincount(member_T, weights=w, minlength=m)
    cols = []
    for w in RECENCY_WINDOWS:
      inside = back_T <= w
      cols += [count(claim_T & inside), count(dollars_T * inside)]
      cols += [count(type_T[c] & inside) for c in types]
    for mask in [claim_T] + [type_T[c] for c in types]:
      cols.append(_group_min(member_T[mask], back_T[mask], m, NO_EVENT_DAYS))
    half = back_T <= HALF_YEAR
    recent = count(dollars_T * half)
    before = count(dollars_T * (~half & (back_T <= conventions.TARGET_WINDOW_DAYS)))
    cols += [before, np.log1p(recent) - np.log1p(before)]
    out[start:stop] = np.stack(cols, axis=1)
  return out, names


def frequent_tokens(train: TaskData, kinds: np.ndarray, max_tokens: int,
                    min_members: int = 5) -> np.ndarray:
  """Ids of the code tokens held by the most train members (at least min_members), sorted."""
  df = np.zeros(kinds.size, np.int64)
  for tok in train.tokens:
    df[np.unique(tok)] += 1
  eligible = np.isin(kinds, np.asarray(CODE_KINDS, np.int8)) & (df >= min_members)
  ids = np.flatnonzero(eligible)
  ids = ids[np.argsort(-df[ids], kind="stable")[:max_tokens]]
  return np.sort(ids)


def token_counts(data: TaskData, token_ids: np.ndarray, vocab_size: int) -> np.ndarray:
  """float32[N, T]: how often each selected token occurs in each member's history."""
  column = np.full(vocab_size, -1, np.int64)
  column[token_ids] = np.arange(token_ids.size)
  out = np.zeros((len(data), token_ids.size), np.float32)
  for i, tok in enumerate(data.tokens):
    col = column[tok]
    col = col[col >= 0]
    out[i] = np.bincount(col, minlength=token_ids.size)
  return out


@dataclasses.dataclass
class FeatureSet:
  """The columns of the tabular baselines, fitted on the train split."""
  vocab_size: int
  kinds: np.ndarray
  token_ids: np.ndarray         # frequent code tokens
  token_names: list[str]
  hcc_names: list[str]          # HCCs seen on train, in column order
  cost_value: np.ndarray        # float[V]: mean dollars of each COST token (0 elsewhere)
  claim_ids: dict[str, int]     # RECENT_CLAIMS name -> token id (-1 if not in the vocabulary)

  @classmethod
  def fit(cls, train: TaskData, kinds: np.ndarray, tokens: Sequence[str], train_hccs,
          max_tokens: int = 512, *, cost_value: np.ndarray) -> "FeatureSet":
    kinds = np.asarray(kinds, np.int8)
    cost_value = np.asarray(cost_value, np.float64)
    if cost_value.shape != kinds.shape:
      raise ValueError(f"cost_value has shape {cost_value.shape}, expected ({kinds.size},) like "
                       "the token kinds")
    ids = frequent_tokens(train, kinds, max_tokens)
    hccs = sorted({h for member in train_hccs for h in member})
    return cls(kinds.size, kinds, ids, [f"tok:{tokens[i]}" for i in ids], hccs, cost_value,
               claim_type_ids(tokens))

  def hcc_matrix(self, hccs) -> np.ndarray:
    col = {h: j for j, h in enumerate(self.hcc_names)}
    out = np.zeros((len(hccs), len(self.hcc_names)), np.float32)
    for i, member in enumerate(hccs):
      for h in member:
        if h in col:  # an HCC never seen on train carries no fitted effect
          out[i, col[h]] = 1
    return out

  def transform(self, data: TaskData, risk_score: np.ndarray, hccs) -> tuple[np.ndarray,
                                                                              list[str]]:
    """float32[N, F] of every feature, and the column names."""
    max_token = max((int(t.max()) for t in data.tokens if t.size), default=-1)
    if max_token >= self.vocab_size:
      raise ValueError(f"task records of split {data.split} hold token id {max_token}, outside "
                       f"the vocabulary of {self.vocab_size} tokens")
    demo, demo_names = demographics(data)
    act, act_names = activity(data, self.kinds)
    rec, rec_names = recency(data, self.kinds, self.cost_value, self.claim_ids)
    cost = np.stack([data.cost_prior, np.log1p(np.maximum(data.cost_prior, 0))], 1)
    parts = [demo, cost.astype(np.float32), act, rec, data.cond_prior.astype(np.float32),
             np.asarray(risk_score, np.float32)[:, None], self.hcc_matrix(hccs),
             token_counts(data, self.token_ids, self.vocab_size)]
    names = (demo_names + ["cost_prior", "log_cost_prior"] + act_names + rec_names +
             [f"prior_{c}" for c in conditions.CONDITION_NAMES] + ["hcc_risk_score"] +
             [f"hcc:{h}" for h in self.hcc_names] + self.token_names)
    return np.concatenate(parts, axis=1), names
