"""Synthea CSV exports -> claims MEDS.

Columns as in Synthea's CSV data dictionary (the schema the `synthea-pydantic` models publish;
that package needs Python >= 3.12, so the columns are checked here): `patients`, `payers`,
`payer_transitions`, `encounters`, `conditions`, `procedures`, `medications`, `claims`,
`claims_transactions`. Header names are matched ignoring case, spaces and underscores
(`PATIENTID`, `Patient ID`). SNOMED CT and RxNorm codes keep their systems (`SNOMED//44054006`,
`RXNORM//860975`, tokenized generically by the builder) with Synthea's descriptions in
codes.parquet (Synthea gives no hierarchy). One claim is one encounter: the encounter's type,
codes, and its claims' diagnoses and transactions share the encounter's claim id. Mapping table:
docs/data.md ("Synthea").
"""

from __future__ import annotations

import csv
import os
from typing import Callable, Iterator, Optional

from lmm_jax import conventions as conv
from lmm_jax.importers import common

ETL_NAME = "lmm_jax.importers.synthea"
SNOMED, RXNORM = "SNOMED", "RXNORM"
# ENCOUNTERCLASS -> (claim type, CMS place of service)
ENCOUNTER_CLASSES = {
    "ambulatory": ("PROFESSIONAL", "11"), "wellness": ("PROFESSIONAL", "11"),
    "outpatient": ("OUTPATIENT", "22"), "urgentcare": ("PROFESSIONAL", "20"),
    "emergency": ("EMERGENCY", "23"), "inpatient": ("INPATIENT", "21"),
    "snf": ("SNF", "31"), "home": ("HOME_HEALTH", "12"), "hospice": ("HOME_HEALTH", "34"),
    "virtual": ("PROFESSIONAL", "02")}
NO_INSURANCE = "NO_INSURANCE"
# Columns each file must have (normalized names); files are read in this order.
FILES: dict[str, tuple[str, ...]] = {
    "patients": ("ID", "BIRTHDATE", "DEATHDATE", "GENDER"),
    "payer_transitions": ("PATIENT", "PAYER"),
    "encounters": ("ID", "START", "PATIENT", "ENCOUNTERCLASS", "CODE", "DESCRIPTION"),
    "conditions": ("START", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION"),
    "procedures": ("START", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION"),
    "medications": ("START", "PATIENT", "ENCOUNTER", "CODE", "DESCRIPTION"),
    "claims": ("ID", "PATIENTID", "APPOINTMENTID", "SERVICEDATE",
               *(f"DIAGNOSIS{i}" for i in range(1, 9))),
    "claims_transactions": ("CLAIMID", "PATIENTID", "TYPE", "AMOUNT", "FROMDATE", "PAYMENTS",
                            "ADJUSTMENTS", "APPOINTMENTID"),
}
REQUIRED_FILES = ("patients", "encounters")


def _norm(name: str) -> str:
  return "".join(ch for ch in name.upper() if ch.isalnum())


def _rows(path: str, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
  """(line, {normalized column: value}) of a Synthea CSV; missing required columns are errors."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    header = next(csv.reader(f), [])
  names = {_norm(k): k for k in header}
  for c in required:
    if c not in names:
      raise common.InputFormatError(path, "no such column (Synthea CSV data dictionary)",
                                    field=c)
  for line, row in common.iter_table(path, "csv", ()):
    yield line, {n: row[k] for n, k in names.items()}


def _lob(payer_name: str) -> Optional[str]:
  name = payer_name.upper()
  if name == NO_INSURANCE:
    return None
  if "MEDICARE" in name or "DUAL" in name:
    return "MEDICARE"
  if "MEDICAID" in name:
    return "MEDICAID"
  return "COMMERCIAL"


class _Mapper:

  def __init__(self, writer: common.MEDSWriter, acct: common.Accounting,
               payers: dict[str, str]):
    self.w, self.acct, self.payers = writer, acct, payers

  def _subject(self, value: str) -> Optional[int]:
    return self.w.subject("Patient/" + value) if value else None

  def _encounter(self, value: str) -> int:
    return self.w.claim("encounter/" + value)

  def _coded(self, system: str, path: str, line: int, r: dict, date_col: str = "START"
             ) -> Optional[str]:
    sid = self._subject(r["PATIENT"])
    if sid is None:
      return "no_patient_id"
    if not r["ENCOUNTER"]:
      return "no_encounter_id"
    day = common.cell_day(r[date_col], path, line, date_col)
    if day is None:
      return "no_date"
    code = r["CODE"].strip()
    if not code:
      return "no_code"
    # Synthea >= 3.3 names the system of conditions / procedures; ICD-10-CM kept as such.
    sys_name = _norm(r.get("SYSTEM", ""))
    prefix = conv.ICD10CM if sys_name.startswith("ICD10") else system
    full = f"{prefix}{conv.SEP}{code}"
    self.w.add(sid, day, full, None, self._encounter(r["ENCOUNTER"]))
    self.w.describe(full, r["DESCRIPTION"])
    return None

  def patients(self, path, line, r) -> Optional[str]:
    sid = self._subject(r["ID"])
    if sid is None:
      return "no_patient_id"
    birth = common.cell_day(r["BIRTHDATE"], path, line, "BIRTHDATE")
    death = common.cell_day(r["DEATHDATE"], path, line, "DEATHDATE")
    sex = common.sex_code(r["GENDER"])
    return self.w.add_member(sid, birth, sex, death)

  def payer_transitions(self, path, line, r) -> Optional[str]:
    sid = self._subject(r["PATIENT"])
    if sid is None:
      return "no_patient_id"
    # Synthea 3 writes START_DATE / END_DATE; earlier versions START_YEAR / END_YEAR (inclusive).
    start_col = "STARTDATE" if "STARTDATE" in r else "STARTYEAR"
    end_col = "ENDDATE" if "ENDDATE" in r else "ENDYEAR"
    if start_col not in r:
      raise common.InputFormatError(path, "neither START_DATE nor START_YEAR", line)
    start = common.cell_day(r[start_col], path, line, start_col)
    if start is None:
      return "no_date"
    end = common.cell_day(r.get(end_col, ""), path, line, end_col)
    if end is not None and end_col == "ENDYEAR":
      end = common.cell_day(f"{r[end_col].strip()}-12-31", path, line, end_col)
    name = self.payers.get(r["PAYER"], "")
    lob = _lob(name) if name else "COMMERCIAL"
    if lob is None:
      return "uninsured_span"
    self.w.add(sid, start, conv.enrollment_code("START", lob))
    if end is not None:
      self.w.add(sid, end, conv.enrollment_code("END", lob))
    return None

  def encounters(self, path, line, r) -> Optional[str]:
    sid = self._subject(r["PATIENT"])
    if sid is None:
      return "no_patient_id"
    if not r["ID"].strip():
      return "no_encounter_id"
    day = common.cell_day(r["START"], path, line, "START")
    if day is None:
      return "no_date"
    claim = self._encounter(r["ID"])
    kind = ENCOUNTER_CLASSES.get(r["ENCOUNTERCLASS"].strip().lower())
    if kind is None:
      self.acct.notes["encounter_class_unknown"] += 1
    else:
      self.w.add(sid, day, f"{conv.CLAIM}{conv.SEP}{kind[0]}", None, claim)
      self.w.add(sid, day, f"{conv.POS}{conv.SEP}{kind[1]}", None, claim)
    if r["CODE"].strip():
      code = f"{SNOMED}{conv.SEP}{r['CODE'].strip()}"
      self.w.add(sid, day, code, None, claim)
      self.w.describe(code, r["DESCRIPTION"])
    return None

  def conditions(self, path, line, r) -> Optional[str]:
    return self._coded(SNOMED, path, line, r)

  def procedures(self, path, line, r) -> Optional[str]:
    return self._coded(SNOMED, path, line, r)

  def medications(self, path, line, r) -> Optional[str]:
    return self._coded(RXNORM, path, line, r)

  def _claim(self, r: dict) -> Optional[int]:
    appointment = r["APPOINTMENTID"].strip()
    if appointment:
      return self._encounter(appointment)
    claim = (r.get("CLAIMID") or r.get("ID") or "").strip()
    return self.w.claim("claim/" + claim) if claim else None

  def claims(self, path, line, r) -> Optional[str]:
    sid = self._subject(r["PATIENTID"])
    if sid is None:
      return "no_patient_id"
    day = common.cell_day(r["SERVICEDATE"], path, line, "SERVICEDATE")
    if day is None:
      return "no_date"
    claim = self._claim(r)
    if claim is None:
      return "no_claim_id"
    for i in range(1, 9):
      code = r[f"DIAGNOSIS{i}"].strip()
      if code:
        self.w.add(sid, day, f"{SNOMED}{conv.SEP}{code}", None, claim)
    return None

  def claims_transactions(self, path, line, r) -> Optional[str]:
    sid = self._subject(r["PATIENTID"])
    if sid is None:
      return "no_patient_id"
    kind = r["TYPE"].strip().upper()
    # Allowed = charges less the payers' adjustments; paid = payments (payers and patient).
    column, code, sign = {"CHARGE": ("AMOUNT", conv.COST_ALLOWED_CODE, 1.0),
                          "ADJUSTMENT": ("ADJUSTMENTS", conv.COST_ALLOWED_CODE, -1.0),
                          "PAYMENT": ("PAYMENTS", common.COST_PAID_CODE, 1.0)}.get(
                              kind, (None, None, 0.0))
    if column is None:
      return "balance_transfer" if kind.startswith("TRANSFER") else "other_transaction_type"
    amount = common.parse_amount(r[column], path, line, column)
    if amount is None:
      return "no_amount"
    # The claim's date comes from its other rows (each claim row takes the earliest).
    claim = self._claim(r)
    if claim is None:
      return "no_claim_id"
    day = common.cell_day(r["FROMDATE"], path, line, "FROMDATE")
    self.w.add(sid, day, code, sign * amount, claim)
    return None


def _payers(path: str) -> dict[str, str]:
  """payers.csv: Id -> NAME (a few rows; read whole)."""
  if not os.path.exists(path):
    return {}
  return {r["ID"]: r["NAME"].strip() for _, r in _rows(path, ("ID", "NAME"))}


def import_synthea(input_dir: str, output_dir: str, *, shard_input_mb: float = 64.0,
                   id_key: bytes = b"") -> dict:
  """Converts a Synthea CSV export (input_dir/*.csv) to claims MEDS; returns the report."""
  paths = {name: os.path.join(input_dir, f"{name}.csv") for name in FILES}
  for name in REQUIRED_FILES:
    if not os.path.exists(paths[name]):
      raise ValueError(f"{input_dir}: no {name}.csv (a Synthea CSV export: exporter.csv.export)")
  present = [p for p in paths.values() if os.path.exists(p)]
  with common.MEDSWriter(output_dir, common.shards_for(present, shard_input_mb),
                         id_key=id_key) as writer:
    acct = common.Accounting()
    mapper = _Mapper(writer, acct, _payers(os.path.join(input_dir, "payers.csv")))
    for name, required in FILES.items():
      path = paths[name]
      if not os.path.exists(path):
        acct.notes[f"missing_{name}.csv"] += 1
        continue
      handler: Callable = getattr(mapper, name)
      source = os.path.relpath(path, input_dir)
      for line, row in _rows(path, required):
        reason = handler(path, line, row)
        if reason:
          acct.dropped(source, reason)
        else:
          acct.converted(source)
    return writer.finish({"dataset_name": "synthea", "etl_name": ETL_NAME,
                          "source": "Synthea CSV export (CSV data dictionary columns)"}, acct)
