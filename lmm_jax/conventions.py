"""The claims conventions of lmm_jax: how our MEDS datasets spell codes.

Every stage (the synthesizer, the dataset builder, baselines, the sampler) reads these names from
here, so a change of spelling happens in one place. Datasets from other ETLs need not follow them:
`lmm_jax.data.code_systems` maps foreign spellings (other prefixes, ICD-9, codes without dots) onto
the same terminology systems.

A claim is written as several MEDS rows sharing `time` and the extra column `claim_id`:
  CLAIM//<CLAIM_TYPE>            the claim's type (one of CLAIM_TYPES)
  POS//<2-digit CMS code>        place of service
  ICD10CM//E11.9                 diagnoses (dotted ICD-10-CM)
  CPT//99213, HCPCS//J1745       procedures; ICD10PCS//0SRC0J9 on inpatient claims
  NDC//00002143380               drug fills (11-digit NDC, no dashes), on pharmacy claims
  COST//ALLOWED                  the claim's allowed amount in dollars, in `numeric_value`
Member-level rows:
  GENDER//F, GENDER//M           static (null `time`)
  MEDS_BIRTH, MEDS_DEATH         meds.birth_code / meds.death_code
  ENROLLMENT//START//<LOB>, ENROLLMENT//END//<LOB>   coverage spans, LOB in LINES_OF_BUSINESS
"""

from __future__ import annotations

import enum

SEP = "//"

# MEDS constants (identical to meds.birth_code / meds.death_code; kept here so that the hot
# tokenization path does not import the schema package).
BIRTH_CODE = "MEDS_BIRTH"
DEATH_CODE = "MEDS_DEATH"

# MEDS split names (meds.train_split, meds.tuning_split, meds.held_out_split).
TRAIN, TUNING, HELD_OUT = "train", "tuning", "held_out"
SPLITS = (TRAIN, TUNING, HELD_OUT)

# Code prefixes of our claims convention.
ICD10CM = "ICD10CM"
ICD10PCS = "ICD10PCS"
ICD9CM = "ICD9CM"
CPT = "CPT"
HCPCS = "HCPCS"
NDC = "NDC"
GENDER = "GENDER"
CLAIM = "CLAIM"
POS = "POS"
COST = "COST"
ENROLLMENT = "ENROLLMENT"

COST_ALLOWED_CODE = "COST//ALLOWED"
FEMALE_CODE = "GENDER//F"
MALE_CODE = "GENDER//M"

CLAIM_TYPES = ("PROFESSIONAL", "OUTPATIENT", "INPATIENT", "EMERGENCY", "SNF", "HOME_HEALTH",
               "DIALYSIS", "PHARMACY")
LINES_OF_BUSINESS = ("COMMERCIAL", "MEDICARE", "MEDICAID")

# CMS place-of-service codes the synthesizer uses (the builder accepts any POS code).
PLACES_OF_SERVICE = {
    "11": "Office", "12": "Home", "19": "Off campus outpatient hospital", "21": "Inpatient hospital",
    "22": "On campus outpatient hospital", "23": "Emergency room - hospital",
    "31": "Skilled nursing facility", "65": "End-stage renal disease treatment facility",
    "81": "Independent laboratory", "01": "Pharmacy",
}

# Cost targets follow the Society of Actuaries studies: uncapped and truncated at $250k.
COST_CAP = 250_000.0
TARGET_WINDOW_DAYS = 365


def enrollment_code(boundary: str, lob: str) -> str:
  """`ENROLLMENT//START//MEDICARE`; boundary is START or END."""
  return SEP.join((ENROLLMENT, boundary, lob))


class TokenKind(enum.IntEnum):
  """What a vocabulary token stands for; the loss and accuracy are broken down by it."""
  SPECIAL = 0      # padding, sequence start/end, unknowns of no system
  DEMOGRAPHIC = 1  # sex, age in years, line of business
  TIME = 2         # time-gap buckets
  DIAGNOSIS = 3    # ICD-10-CM / ICD-9-CM
  PROCEDURE = 4    # CPT, HCPCS, ICD-10-PCS
  DRUG = 5         # NDC (or its ingredient / class group)
  COST = 6         # claim cost quantile bins
  CLAIM = 7        # claim type and place of service
  DEATH = 8
  OTHER = 9        # labs and codes of systems we do not know (tokenized generically)


TOKEN_KIND_NAMES = tuple(k.name.lower() for k in TokenKind)
