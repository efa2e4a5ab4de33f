"""The per-example fields of a task record: who is eligible at the index date, what is known
then (covariates) and what happens in the target year (targets).

A label is a function of one subject's cleaned events and the index window returning the values
of the fields it declares:

    @register(Field("cost_next", FieldKind.TARGET, "float32", doc="...", batch_dtype="float32"))
    def next_year_cost(ev: events.SubjectEvents, w: Window) -> dict[str, Any]:
      return {"cost_next": ...}

The task record is the timeline fields, `index_day`, then the fields of every registered label in
registration order (`records.schema(records.TASK)`); the builder writes them and the input
pipeline batches every field with a `batch_dtype`. So a new prediction target is a label here, its
task (lmm_jax/tasks) and its config. Labels are registered when this module is imported, so the
builder's worker processes (forked or spawned) see the same ones; `registered` adds labels for a
while (tests, with one worker). Labels are only computed for subjects `exclusion` keeps: those have
a birth date and coverage over the history and the target year.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from lmm_jax import conditions
from lmm_jax import conventions
from lmm_jax.data import events
from lmm_jax.data.code_systems import Role
from lmm_jax.data.fields import STRINGS, Field, FieldKind

TASK_EXCLUSIONS = ("no_birth_date", "died_before_index", "too_little_history",
                   "no_history_before_index", "not_enrolled_through_target_year",
                   "died_in_target_year")


@dataclasses.dataclass(frozen=True)
class Window:
  """The index date and the two years around it (days since 1970-01-01)."""
  index: int

  @property
  def target_end(self) -> int:
    """The last day of the target year [index, index + 365)."""
    return self.index + conventions.TARGET_WINDOW_DAYS - 1

  def before(self, day: np.ndarray) -> np.ndarray:
    """Any time before the index date."""
    return day < self.index

  def last_year(self, day: np.ndarray) -> np.ndarray:
    """[index - 365, index)."""
    return (day < self.index) & (day >= self.index - conventions.TARGET_WINDOW_DAYS)

  def target_year(self, day: np.ndarray) -> np.ndarray:
    """[index, index + 365)."""
    return (day >= self.index) & (day <= self.target_end)


LabelFn = Callable[[events.SubjectEvents, Window], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class Label:
  name: str
  fields: tuple[Field, ...]
  fn: LabelFn


_LABELS: list[Label] = []


def add(label: Label) -> None:
  """Registers a label (its field names must be new)."""
  taken = {f.name for lab in _LABELS for f in lab.fields}
  clash = [f.name for f in label.fields if f.name in taken]
  if clash or any(lab.name == label.name for lab in _LABELS):
    raise ValueError(f"label {label.name!r}: already registered, or field(s) {clash} taken")
  for f in label.fields:
    if f.kind not in (FieldKind.COVARIATE, FieldKind.TARGET):
      raise ValueError(f"label {label.name!r}: field {f.name!r} must be a COVARIATE or TARGET")
  _LABELS.append(label)


def register(*fields: Field) -> Callable[[LabelFn], LabelFn]:
  """Decorator: registers fn as the label computing `fields` (named after fn)."""
  def wrap(fn: LabelFn) -> LabelFn:
    add(Label(fn.__name__, tuple(fields), fn))
    return fn
  return wrap


@contextlib.contextmanager
def registered(*labels: Label) -> Iterator[None]:
  """Adds labels for the duration of the block (in this process only)."""
  for label in labels:
    add(label)
  try:
    yield
  finally:
    for label in labels:
      _LABELS.remove(label)


def fields() -> tuple[Field, ...]:
  """The fields of every registered label, in registration order."""
  return tuple(f for label in _LABELS for f in label.fields)


def compute(ev: events.SubjectEvents, w: Window) -> dict[str, Any]:
  """Every label's values for one eligible subject."""
  out: dict[str, Any] = {}
  for label in _LABELS:
    values = label.fn(ev, w)
    if set(values) != {f.name for f in label.fields}:
      raise ValueError(f"label {label.name!r} returned {sorted(values)}, declared "
                       f"{[f.name for f in label.fields]}")
    out.update(values)
  return out


def exclusion(ev: events.SubjectEvents, w: Window, config: Mapping[str, Any]) -> Optional[str]:
  """Why the subject gets no task record at the index date (one of TASK_EXCLUSIONS), or None.

  config: the builder's min_history_days, require_full_target_year and keep_decedents.
  """
  index, target_end, spans, death = w.index, w.target_end, ev.spans, ev.death
  if ev.birth is None:
    return "no_birth_date"
  if death is not None and death < index:
    return "died_before_index"
  if not events.covered(spans, index - int(config["min_history_days"]), index - 1):
    return "too_little_history"
  if ev.start_day >= index:
    return "no_history_before_index"
  if config["require_full_target_year"]:
    if death is not None and death <= target_end:
      if not config["keep_decedents"]:
        return "died_in_target_year"
      if not events.covered(spans, index, death):
        return "not_enrolled_through_target_year"
    elif not events.covered(spans, index, target_end):
      return "not_enrolled_through_target_year"
  return None


def has_target_year_data(ev: events.SubjectEvents, w: Window) -> bool:
  """Whether the subject has any claim row (a token or cost row) in the target year."""
  return bool(np.any(np.isin(ev.role, events.TOKEN_ROLES) & w.target_year(ev.day)))


def check_build(report: Mapping[str, Any], config: Mapping[str, Any]) -> None:
  """Fails a build that no task could use, in one sentence with the figures (config:
  required_splits, min_share_with_target_year_data)."""
  required = tuple(config["required_splits"])
  unknown = sorted(set(required) - set(conventions.SPLITS))
  if unknown:
    raise ValueError(f"required_splits names unknown split(s) {unknown}; splits are "
                     f"{conventions.SPLITS}")
  empty = [f"{s} ({report['patients'][s]} patients, {report['task_examples'][s]} task examples)"
           for s in required if not report["patients"][s] or not report["task_examples"][s]]
  if empty:
    raise ValueError(
        f"the build has an empty split or task: {', '.join(empty)}, from {report['used_rows']} "
        f"of {report['input_rows']} input rows at index date {report['index_date']} (see "
        "report.json's dropped and task_exclusions; config.required_splits lists the splits "
        "that must not be empty)")
  examples = sum(report["task_examples"].values())
  with_data = sum(report["task_examples_with_target_year_data"].values())
  share = with_data / examples if examples else 0.0
  floor = float(config["min_share_with_target_year_data"])
  if examples and share < floor:
    raise ValueError(
        f"only {with_data} of {examples} task examples ({share:.1%}) have any claim in the "
        f"target year after the index date {report['index_date']} (data end "
        f"{report['data_end_date']}), below min_share_with_target_year_data={floor}: check "
        "index_date and the dates of the input")


# ---------------------------------------------------------------------------------------------
# The labels. Registration order is the order of the fields in the task record.


@register(
    Field("sex", FieldKind.COVARIATE, "int8", doc="0 unknown, 1 female, 2 male",
          batch_dtype="int32"),
    Field("lob", FieldKind.COVARIATE, "int8",
          doc="line of business at the index date: 0 unknown, then LINES_OF_BUSINESS",
          batch_dtype="int32"),
    Field("age_at_index", FieldKind.COVARIATE, "float32", doc="age in years at the index date",
          batch_dtype="float32"))
def demographics(ev: events.SubjectEvents, w: Window) -> dict[str, Any]:
  lob = events.lob_at([s for s in ev.spans if s[0] < w.index], w.index - 1)
  return {"sex": {"F": 1, "M": 2}.get(ev.sex, 0),
          "lob": (conventions.LINES_OF_BUSINESS.index(lob) + 1
                  if lob in conventions.LINES_OF_BUSINESS else 0),
          "age_at_index": ev.age_at(w.index)}


@register(
    Field("cost_next", FieldKind.TARGET, "float32",
          doc="allowed dollars in the target year [index, index + 365d)", batch_dtype="float32"),
    Field("cost_next_capped", FieldKind.TARGET, "float32", doc="cost_next capped at COST_CAP",
          batch_dtype="float32"),
    Field("cost_prior", FieldKind.COVARIATE, "float32",
          doc="allowed dollars in [index - 365d, index)", batch_dtype="float32"))
def cost(ev: events.SubjectEvents, w: Window) -> dict[str, Any]:
  is_cost = ev.role == Role.COST
  cost_next = float(ev.value[is_cost & w.target_year(ev.day)].astype(np.float64).sum())
  cost_prior = float(ev.value[is_cost & w.last_year(ev.day)].astype(np.float64).sum())
  return {"cost_next": cost_next, "cost_next_capped": min(cost_next, conventions.COST_CAP),
          "cost_prior": cost_prior}


def _condition_flags(codes: events.CodeTable) -> np.ndarray:
  """uint8[max(K, 1), C]: the conditions of each code's ICD-10-CM code (raw, before backoff)."""
  out = np.zeros((max(len(codes.codes), 1), conditions.NUM_CONDITIONS), np.uint8)
  for i, info in enumerate(codes.infos):
    if info.icd10:
      out[i] = conditions.condition_flags([info.icd10])
  return out


def _claim_type_keys(codes: events.CodeTable) -> np.ndarray:
  """object[max(K, 1)]: the claim type of each CLAIM//<type> code ('' for other codes)."""
  out = np.full(max(len(codes.codes), 1), "", object)
  for i, (code, info) in enumerate(zip(codes.codes, codes.infos)):
    if info.role == Role.CLAIM:
      out[i] = code.partition("//")[2].strip().upper()
  return out


def _row_claim_types(ev: events.SubjectEvents, rows: np.ndarray) -> np.ndarray:
  """object[len(rows)]: the claim type of each row's claim ('' without a claim or its type row)."""
  keys = ev.codes.derived(_claim_type_keys)
  is_type = (ev.role == Role.CLAIM) & (ev.claim >= 0)
  type_claim = ev.claim[is_type]
  order = np.argsort(type_claim, kind="stable")
  type_claim, type_key = type_claim[order], keys[ev.code_index[is_type]][order]
  out = np.full(len(rows), "", object)
  if type_claim.size == 0:
    return out
  claim = ev.claim[rows]
  pos = np.minimum(np.searchsorted(type_claim, claim), type_claim.size - 1)
  hit = (claim >= 0) & (type_claim[pos] == claim)
  out[hit] = type_key[pos[hit]]
  return out


def _cases(ev: events.SubjectEvents, flags_KxC: np.ndarray, rows: np.ndarray) -> np.ndarray:
  return conditions.case_flags(flags_KxC[ev.code_index[rows]], _row_claim_types(ev, rows),
                               ev.day[rows])


@register(
    Field("cond_next", FieldKind.TARGET, "uint8", (conditions.NUM_CONDITIONS,),
          doc="the condition's case rule (conditions.CaseRule) met by the target year's claims",
          batch_dtype="int32"),
    Field("cond_prior", FieldKind.COVARIATE, "uint8", (conditions.NUM_CONDITIONS,),
          doc="the case rule met by the claims before the index date (prevalent)",
          batch_dtype="int32"))
def chronic_conditions(ev: events.SubjectEvents, w: Window) -> dict[str, Any]:
  """CCW-style labels: one inpatient (or, by condition, SNF / home health) claim or two other
  claims on different days with a qualifying diagnosis (see lmm_jax.conditions)."""
  flags_KxC = ev.codes.derived(_condition_flags)
  dx = ev.role == Role.DX
  return {"cond_next": _cases(ev, flags_KxC, np.flatnonzero(dx & w.target_year(ev.day))),
          "cond_prior": _cases(ev, flags_KxC, np.flatnonzero(dx & w.before(ev.day)))}


def _dotless_icd10(codes: events.CodeTable) -> list[str]:
  return [info.icd10.replace(".", "") if info.icd10 else "" for info in codes.infos]


@register(
    Field("dx_prior", FieldKind.COVARIATE, STRINGS, (None,),
          doc="dotless ICD-10-CM codes of [index - 365d, index), sorted (CMS-HCC baselines)"))
def prior_diagnoses(ev: events.SubjectEvents, w: Window) -> dict[str, Any]:
  dotless = ev.codes.derived(_dotless_icd10)
  last_year = (ev.role == Role.DX) & w.last_year(ev.day)
  return {"dx_prior": sorted({dotless[i] for i in ev.code_index[last_year] if dotless[i]})}
