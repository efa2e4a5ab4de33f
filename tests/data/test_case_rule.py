"""The CCW-style chronic-condition case rule (lmm_jax.conditions.CaseRule) on cond_next/cond_prior."""

from __future__ import annotations

import numpy as np
import pytest

from lmm_jax import conditions
from lmm_jax.data import labels
from tests.data.test_subject_parts import _subject

INDEX = 18305
HEAD = [(None, "GENDER//F", None, -1), (0, "MEDS_BIRTH", None, -1),
        (17000, "ENROLLMENT//START//COMMERCIAL", None, -1)]
TAIL = [(19500, "ENROLLMENT//END//COMMERCIAL", None, -1)]
K = {n: i for i, n in enumerate(conditions.CONDITION_NAMES)}


def _claims(*claims):
  """Rows of claims given as (day, claim type, [codes])."""
  rows = []
  for j, (day, ctype, codes) in enumerate(claims):
    rows.append((day, f"CLAIM//{ctype}", None, j))
    rows += [(day, c, None, j) for c in codes]
    rows.append((day, "COST//ALLOWED", 10.0, j))
  return HEAD + sorted(rows, key=lambda r: (r[0], r[3])) + TAIL


def _labels(*claims):
  return labels.compute(_subject(_claims(*claims)), labels.Window(INDEX))


def test_one_outpatient_claim_is_no_case_two_on_different_days_are():
  one = _labels((18400, "PROFESSIONAL", ["ICD10CM//E11.9"]))
  assert one["cond_next"][K["diabetes_t2"]] == 0
  same_day = _labels((18400, "PROFESSIONAL", ["ICD10CM//E11.9"]),
                     (18400, "OUTPATIENT", ["ICD10CM//E11.65"]))
  assert same_day["cond_next"][K["diabetes_t2"]] == 0
  two = _labels((18400, "PROFESSIONAL", ["ICD10CM//E11.9"]),
                (18401, "PROFESSIONAL", ["ICD10CM//E11.65"]))
  assert two["cond_next"].tolist() == [int(i == K["diabetes_t2"])
                                       for i in range(conditions.NUM_CONDITIONS)]


def test_rule_out_on_one_lab_imaging_or_er_claim_is_no_case():
  for ctype in ("PROFESSIONAL", "OUTPATIENT", "EMERGENCY"):
    v = _labels((18400, ctype, ["ICD10CM//C34.90"]), (18410, ctype, ["ICD10CM//R05.9"]))
    assert v["cond_next"][K["lung_cancer"]] == 0, ctype


@pytest.mark.parametrize("ctype,name,case", [
    ("INPATIENT", "heart_failure", 1), ("SNF", "heart_failure", 1),
    ("HOME_HEALTH", "heart_failure", 1), ("EMERGENCY", "heart_failure", 0),
    ("INPATIENT", "stroke", 1), ("SNF", "stroke", 0)])   # CCW stroke/TIA: inpatient only
def test_one_facility_claim_makes_a_case_by_condition(ctype, name, case):
  code = {"heart_failure": "ICD10CM//I50.9", "stroke": "ICD10CM//I63.9"}[name]
  assert _labels((18400, ctype, [code]))["cond_next"][K[name]] == case


def test_prior_uses_the_same_rule_over_the_history_and_does_not_carry_forward():
  v = _labels((17200, "PROFESSIONAL", ["ICD10CM//I10"]), (17900, "PROFESSIONAL", ["ICD10CM//I10"]),
              (18000, "PROFESSIONAL", ["ICD10CM//J44.9"]),
              (18400, "PROFESSIONAL", ["ICD10CM//J44.9"]))
  # Hypertension: two claims years apart in the history make it prevalent, not a target-year case.
  assert v["cond_prior"][K["hypertension"]] == 1 and v["cond_next"][K["hypertension"]] == 0
  # COPD: one claim before and one after the index date: no case in either window.
  assert v["cond_prior"][K["copd"]] == 0 and v["cond_next"][K["copd"]] == 0


def test_rows_without_a_claim_id_count_as_other_claims():
  rows = HEAD + [(18400, "ICD10CM//I48.91", None, -1), (18420, "ICD10CM//I48.91", None, -1)] + TAIL
  v = labels.compute(_subject(rows), labels.Window(INDEX))
  assert v["cond_next"][K["atrial_fibrillation"]] == 1


def test_case_flags_directly():
  cond = np.zeros((3, conditions.NUM_CONDITIONS), np.uint8)
  cond[:, K["ckd"]] = 1
  assert conditions.case_flags(cond, ["PROFESSIONAL"] * 3, np.array([5, 5, 5]))[K["ckd"]] == 0
  assert conditions.case_flags(cond, ["PROFESSIONAL", "", "X"], np.array([5, 5, 6]))[K["ckd"]] == 1
  assert conditions.case_flags(cond[:0], [], np.zeros(0)).sum() == 0
