"""Claims in from where payers have them, written as claims MEDS (docs/data.md, "Importers").

  claims.import_claims   claim header / line tables (CSV or parquet) through a column mapping
  fhir.import_fhir       FHIR R4 ExplanationOfBenefit, Patient, Coverage (CARIN Blue Button)
  synthea.import_synthea Synthea CSV exports
"""
