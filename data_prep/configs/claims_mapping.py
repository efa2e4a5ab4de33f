r"""Example column mapping of `python -m data_prep.import_claims` (docs/data.md, "Claims extracts").

  python -m data_prep.import_claims --input_dir=EXTRACT --output_dir=MEDS \
      --mapping=data_prep/configs/claims_mapping.py --mapping.format=parquet

The column names are those of a typical 837-derived warehouse extract (CMS-style claim header and
line tables, a member table and an eligibility table); copy this file for another extract, or
override fields with --mapping.headers.allowed=ALLOWED_AMT. A field set to '' is absent. The
config is locked: a misspelled --mapping.KEY is an error.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.mapping_name = "claims_mapping.py (example warehouse layout)"
  c.dataset_name = "claims_extract"
  c.format = "csv"                     # 'csv' (with a header line) or 'parquet'
  c.diagnosis_system = "ICD10CM"       # or 'ICD9CM' for pre-October-2015 extracts
  c.amounts_from = "lines"             # 'lines' or 'headers': where the allowed / paid amounts are
  c.default_lob = "COMMERCIAL"         # line of business when the enrollment table has none
  # Source claim-type values -> conventions.CLAIM_TYPES (an unmapped value is an error).
  c.claim_type_values = {"P": "PROFESSIONAL", "O": "OUTPATIENT", "I": "INPATIENT",
                         "E": "EMERGENCY", "S": "SNF", "H": "HOME_HEALTH", "D": "DIALYSIS",
                         "RX": "PHARMACY"}
  # Source line-of-business values -> our lines of business (others: upper-cased as given).
  c.lob_values = {"MA": "MEDICARE", "MCD": "MEDICAID", "COM": "COMMERCIAL"}
  c.headers = ml_collections.ConfigDict(dict(
      files="claim_header*.csv", claim_id="CLM_ID", member_id="MBR_ID", from_date="CLM_FROM_DT",
      claim_type="CLM_TYPE_CD", place_of_service="CLM_POS_CD",
      diagnosis=tuple(f"ICD_DGNS_CD{i}" for i in range(1, 5)),
      icd_procedures=("ICD_PRCDR_CD1", "ICD_PRCDR_CD2"), allowed="", paid=""))
  c.lines = ml_collections.ConfigDict(dict(
      files="claim_line*.csv", claim_id="CLM_ID", member_id="MBR_ID", service_date="LINE_SRVC_DT",
      procedure="HCPCS_CD", ndc="NDC_CD", place_of_service="LINE_POS_CD",
      allowed="LINE_ALWD_AMT", paid="LINE_PD_AMT"))
  c.members = ml_collections.ConfigDict(dict(
      files="member*.csv", member_id="MBR_ID", birth_date="BIRTH_DT", sex="SEX_CD",
      death_date="DEATH_DT"))
  c.enrollment = ml_collections.ConfigDict(dict(
      files="enrollment*.csv", member_id="MBR_ID", start_date="ENRL_START_DT",
      end_date="ENRL_END_DT", line_of_business="LOB_CD"))
  c.lock()
  return c
