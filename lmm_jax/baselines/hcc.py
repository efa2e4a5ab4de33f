"""CMS-HCC V28 risk scores of members, computed by the maintained `hccinfhir` package.

The CMS-HCC model is the industry-standard prospective risk model: the year's diagnoses map to
hierarchical condition categories whose coefficients, plus demographic ones, sum to a relative risk
score. It is a Medicare model; we score every member with it (as commercial risk tools built on it
do) and recalibrate the score to dollars on the train split (lmm_jax.baselines.cost).

Eligibility segment, from the task record: members of line of business MEDICAID are scored as full
benefit duals (dual status code 02); everyone else as non-dual. hccinfhir derives the aged/disabled
split from age (under 65: disabled segment). Unknown sex is scored with the female table and
unknown age as 0; both are counted and reported.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import warnings

import numpy as np
import tqdm

with warnings.catch_warnings():  # hccinfhir loads its tables at import via importlib.resources.path
  warnings.simplefilter("ignore", DeprecationWarning)
  import hccinfhir  # pylint: disable=g-import-not-at-top,wrong-import-position

from lmm_jax import conventions
from lmm_jax.baselines import features

MODEL_NAME = "CMS-HCC Model V28"
_MEDICAID = 1 + conventions.LINES_OF_BUSINESS.index("MEDICAID")


@dataclasses.dataclass
class HccScores:
  risk_score: np.ndarray          # float64[N]
  hccs: list[list[str]]           # the HCCs (after hierarchies) of each member
  notes: dict[str, int]           # counts of members scored with a fallback, by reason


def demographics_of(age: float, sex: int, lob: int, notes: collections.Counter) -> dict:
  """hccinfhir Demographics fields of one member (see the module docstring)."""
  if sex not in (1, 2):
    notes["unknown sex scored as female"] += 1
  if age < 0:
    notes["unknown age scored as 0"] += 1
  return {"age": int(max(age, 0)), "sex": "M" if sex == 2 else "F",
          "dual_elgbl_cd": "02" if lob == _MEDICAID else "NA"}


@functools.lru_cache(maxsize=1)
def _engine():
  with warnings.catch_warnings():  # hccinfhir's use of importlib.resources.path
    warnings.simplefilter("ignore", DeprecationWarning)
    return hccinfhir.HCCInFHIR(model_name=MODEL_NAME)


def score(data: features.TaskData, progress: bool = True) -> HccScores:
  """V28 risk score and HCC list of every member, from dx_prior and demographics."""
  engine = _engine()
  notes = collections.Counter()
  risk = np.zeros(len(data), np.float64)
  hccs = []
  cache = {}
  for i in tqdm.tqdm(range(len(data)), desc=f"CMS-HCC {data.split}", disable=not progress,
                     unit=" members"):
    demo = demographics_of(float(data.age[i]), int(data.sex[i]), int(data.lob[i]), notes)
    key = (tuple(sorted(set(data.dx_prior[i]))), demo["age"], demo["sex"], demo["dual_elgbl_cd"])
    if key not in cache:
      with warnings.catch_warnings():  # hccinfhir's use of importlib.resources.path
        warnings.simplefilter("ignore", DeprecationWarning)
        result = engine.calculate_from_diagnosis(list(key[0]), hccinfhir.Demographics(**demo))
      cache[key] = (float(result.risk_score), sorted(result.hcc_list))
    risk[i], member_hccs = cache[key]
    hccs.append(member_hccs)
  return HccScores(risk, hccs, dict(notes))
