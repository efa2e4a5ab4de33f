"""Chronic-condition code sets: the multi-label targets of fine-tuning and zero-shot risk.

No PyPI package ships the CMS Chronic Conditions Warehouse (CCW) algorithms, so we define the code
sets here, following the condition list of the CCW "Chronic Conditions" and "Other Chronic or
Potentially Disabling Conditions" categories (https://www2.ccwdata.org/condition-categories) and the
ICD-10-CM categories their reference code lists are built from. We split the CCW's combined
conditions (RA/OA, hip/pelvic fracture, stroke/TIA) where the issue list asks for them separately.
Every prefix is a valid ICD-10-CM category or subcategory (checked against `simple-icd-10-cm` in
tests).

A *qualifying claim* carries a diagnosis (any position) whose dotless ICD-10-CM code starts with
one of the condition's prefixes. The CCW-style case rule (`CaseRule`, per condition) makes a
*case* in a window when the window holds at least one qualifying claim of a claim type in
`single_claim_types` (inpatient; for most conditions also skilled nursing and home health, as in
the CCW algorithms), or at least `other_claims` (2) qualifying claims of any other type on
different days. So a rule-out diagnosis on a single lab, imaging or emergency claim makes no case.
A condition is *prevalent* at an index date when the rule is met over the whole history before it
(`cond_prior`), and *present in the target year* when the rule is met by the claims of
[index, index + 365d) alone (`cond_next`): a prior case is NOT carried forward (the CCW's "ever"
flags carry it; its annual flags, like ours, need claims in the reference period), so the
synthetic oracle's condition probabilities, which apply the same rule to the simulated target
year, estimate exactly this label. Differences from the CCW: the CCW uses a per-condition
reference period of 1-3 years and, for a few conditions, other claim counts; we use the index
window given (the target year, or the whole history) for every condition.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Iterable, Sequence

import numpy as np


# Claim types (conventions.CLAIM_TYPES) of which one qualifying claim makes a case (CCW: "at least
# 1 inpatient, SNF or HHA claim"); claims of every other type need a second one on another day.
FACILITY_CLAIM_TYPES = ("INPATIENT", "SNF", "HOME_HEALTH")


@dataclasses.dataclass(frozen=True)
class CaseRule:
  """CCW-style claims rule: one claim of `single_claim_types`, or `other_claims` other qualifying
  claims on different days, in the window."""
  single_claim_types: tuple[str, ...] = FACILITY_CLAIM_TYPES
  other_claims: int = 2


CCW_RULE = CaseRule()
INPATIENT_RULE = CaseRule(single_claim_types=("INPATIENT",))  # CCW stroke/TIA: inpatient only


@dataclasses.dataclass(frozen=True)
class Condition:
  name: str                      # snake_case; used in column names (`{name}_true`, `{name}_pred`)
  description: str
  icd10cm_prefixes: tuple[str, ...]  # dotless ICD-10-CM prefixes
  rule: CaseRule = CCW_RULE


CONDITIONS: tuple[Condition, ...] = (
    Condition("hypertension", "Hypertension", ("I10", "I11", "I12", "I13", "I15", "I16")),
    Condition("hyperlipidemia", "Hyperlipidemia", ("E780", "E781", "E782", "E784", "E785")),
    Condition("diabetes_t2", "Type 2 diabetes mellitus", ("E11",)),
    Condition("ckd", "Chronic kidney disease", ("N18", "I12", "I13", "Z992")),
    Condition("heart_failure", "Heart failure", ("I50", "I110", "I130", "I132")),
    Condition("ischemic_heart_disease", "Ischemic heart disease",
              ("I20", "I21", "I22", "I24", "I25")),
    Condition("atrial_fibrillation", "Atrial fibrillation and flutter", ("I48",)),
    Condition("copd", "Chronic obstructive pulmonary disease", ("J41", "J42", "J43", "J44")),
    Condition("asthma", "Asthma", ("J45",)),
    Condition("depression", "Depression", ("F32", "F33", "F341")),
    Condition("anxiety", "Anxiety disorders", ("F40", "F41")),
    Condition("dementia", "Alzheimer's disease and related dementias",
              ("F01", "F02", "F03", "G30", "G310", "G311")),
    Condition("osteoarthritis", "Osteoarthritis", ("M15", "M16", "M17", "M18", "M19")),
    Condition("rheumatoid_arthritis", "Rheumatoid arthritis", ("M05", "M06")),
    Condition("osteoporosis", "Osteoporosis", ("M80", "M81")),
    Condition("obesity", "Obesity", ("E66", "Z683", "Z684")),
    Condition("hypothyroidism", "Hypothyroidism", ("E01", "E02", "E03", "E890")),
    Condition("breast_cancer", "Breast cancer", ("C50", "D05")),
    Condition("prostate_cancer", "Prostate cancer", ("C61", "D075")),
    Condition("colorectal_cancer", "Colorectal cancer", ("C18", "C19", "C20")),
    Condition("lung_cancer", "Lung cancer", ("C34",)),
    Condition("stroke", "Stroke and transient ischemic attack", ("I60", "I61", "I63", "G45"),
              INPATIENT_RULE),
)
CONDITION_NAMES: tuple[str, ...] = tuple(c.name for c in CONDITIONS)
NUM_CONDITIONS = len(CONDITIONS)


def normalize_icd10(code: str) -> str:
  """'E11.9' / 'e119 ' -> 'E119'."""
  return code.strip().upper().replace(".", "")


@functools.lru_cache(maxsize=None)
def _prefix_table() -> tuple[tuple[str, int], ...]:
  return tuple((p, i) for i, c in enumerate(CONDITIONS) for p in c.icd10cm_prefixes)


@functools.lru_cache(maxsize=200_000)
def conditions_of(icd10cm_code: str) -> tuple[int, ...]:
  """Indices (into CONDITIONS) of the conditions a single ICD-10-CM code (any spelling) counts for."""
  code = normalize_icd10(icd10cm_code)
  return tuple(sorted({i for p, i in _prefix_table() if code.startswith(p)}))


def condition_flags(icd10cm_codes: Iterable[str]) -> np.ndarray:
  """uint8[NUM_CONDITIONS]: 1 where any of the codes counts for the condition."""
  flags = np.zeros(NUM_CONDITIONS, np.uint8)
  for code in icd10cm_codes:
    for i in conditions_of(code):
      flags[i] = 1
  return flags


@functools.lru_cache(maxsize=None)
def _rule_groups() -> tuple[tuple[tuple[str, ...], np.ndarray], ...]:
  """(single_claim_types, condition mask bool[C]) per distinct single-claim rule."""
  groups: dict[tuple[str, ...], np.ndarray] = {}
  for k, c in enumerate(CONDITIONS):
    groups.setdefault(c.rule.single_claim_types, np.zeros(NUM_CONDITIONS, bool))[k] = True
  return tuple(groups.items())


def case_flags(cond_ExC: np.ndarray, claim_type: Sequence[str], day: np.ndarray) -> np.ndarray:
  """uint8[NUM_CONDITIONS]: the case rule over the diagnosis rows of one window.

  cond_ExC: uint8/bool [E, C] conditions of each diagnosis row; claim_type: the claim type of the
  row's claim (an unknown or empty type counts as an "other" claim); day: int [E].
  """
  cond_ExC = np.asarray(cond_ExC, bool)
  if cond_ExC.size == 0:
    return np.zeros(NUM_CONDITIONS, np.uint8)
  day = np.asarray(day, np.int64)
  types = np.asarray(claim_type, object)
  single = np.zeros(NUM_CONDITIONS, bool)
  for single_types, mask in _rule_groups():
    rows = np.isin(types, single_types)
    if rows.any():
      single |= cond_ExC[rows].any(0) & mask
  big = np.iinfo(np.int64).max
  first = np.where(cond_ExC, day[:, None], big).min(0)
  last = np.where(cond_ExC, day[:, None], -big).max(0)
  out = single | (last > first)   # two qualifying days
  for k, c in enumerate(CONDITIONS):   # rules asking for more than two days (none by default)
    if c.rule.other_claims != 2 and not single[k]:
      out[k] = len(np.unique(day[cond_ExC[:, k]])) >= c.rule.other_claims
  return out.astype(np.uint8)


def index_of(names: Sequence[str]) -> list[int]:
  """Condition indices for names; a clear error for an unknown one."""
  lookup = {n: i for i, n in enumerate(CONDITION_NAMES)}
  unknown = [n for n in names if n not in lookup]
  if unknown:
    raise KeyError(f"unknown chronic condition(s) {unknown}; known: {list(CONDITION_NAMES)}")
  return [lookup[n] for n in names]
