"""FHIR R4 ExplanationOfBenefit (CARIN for Blue Button), Patient and Coverage -> claims MEDS.

Input: bulk-export NDJSON (`ExplanationOfBenefit.ndjson`, `Patient.ndjson`, `Coverage.ndjson`,
one resource per line, any file name ending .ndjson) or JSON files holding a Bundle or one
resource. Every resource is validated with `fhir.resources` (its R4B models: R4B changed nothing
in these three resources' elements that we read) before it is mapped; the mapping table is in
docs/data.md ("FHIR ExplanationOfBenefit").
"""

from __future__ import annotations

import datetime
import glob
import importlib.metadata
import json
import os
from typing import Iterator, Optional

from fhir.resources.R4B import coverage as fhir_coverage
from fhir.resources.R4B import explanationofbenefit as fhir_eob
from fhir.resources.R4B import patient as fhir_patient
import pydantic

from lmm_jax import conventions as conv
from lmm_jax.data import code_systems
from lmm_jax.importers import common

ETL_NAME = "lmm_jax.importers.fhir"
MODELS = {"ExplanationOfBenefit": fhir_eob.ExplanationOfBenefit,
          "Patient": fhir_patient.Patient, "Coverage": fhir_coverage.Coverage}

# Code system URIs (CARIN BB and base FHIR) -> our prefixes.
DIAGNOSIS_SYSTEMS = {"http://hl7.org/fhir/sid/icd-10-cm": conv.ICD10CM,
                     "http://hl7.org/fhir/sid/icd-9-cm": conv.ICD9CM}
PROCEDURE_SYSTEMS = {"http://www.cms.gov/Medicare/Coding/ICD10": conv.ICD10PCS,
                     "http://hl7.org/fhir/sid/icd-10-pcs": conv.ICD10PCS,
                     "http://www.ama-assn.org/go/cpt": conv.CPT,
                     "https://bluebutton.cms.gov/resources/codesystem/hcpcs": conv.HCPCS,
                     "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": conv.HCPCS,
                     "http://hl7.org/fhir/sid/ndc": conv.NDC}
POS_SYSTEM = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"
CLAIM_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/claim-type"
# claim-type code (and C4BB institutional subType) -> conventions.CLAIM_TYPES
CLAIM_TYPES = {("institutional", "inpatient"): "INPATIENT",
               ("institutional", "outpatient"): "OUTPATIENT", ("institutional", ""): "OUTPATIENT",
               ("professional", ""): "PROFESSIONAL", ("oral", ""): "PROFESSIONAL",
               ("vision", ""): "PROFESSIONAL", ("pharmacy", ""): "PHARMACY"}
# Adjudication category codes (http://terminology.hl7.org/CodeSystem/adjudication) -> cost code.
COST_CATEGORIES = {"eligible": conv.COST_ALLOWED_CODE, "benefit": common.COST_PAID_CODE}
# Coverage.type: Source of Payment Typology (https://nahdo.org/sopt) first digit -> LOB.
SOPT_LOB = {"1": "MEDICARE", "2": "MEDICAID", "5": "COMMERCIAL", "6": "COMMERCIAL"}
_SKIPPED_STATUS = ("cancelled", "entered-in-error", "draft")


def _member(reference) -> Optional[str]:
  """'Patient/1', 'https://x/fhir/Patient/1' or 'urn:uuid:1' (a bundle's) -> 'Patient/1'."""
  ref = (reference.reference or "") if reference is not None else ""
  if ref.startswith("urn:uuid:"):
    return "Patient/" + ref[len("urn:uuid:"):]
  parts = ref.rstrip("/").split("/")
  if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
    return "Patient/" + parts[-1]
  return None


def _day(value) -> Optional[int]:
  if value is None:
    return None
  if isinstance(value, datetime.datetime):
    value = value.date()
  return (value - datetime.date(1970, 1, 1)).days


def _codings(concept):
  return (concept.coding or []) if concept is not None else []


class _Mapper:

  def __init__(self, writer: common.MEDSWriter, acct: common.Accounting, default_lob: str):
    self.w, self.acct, self.default_lob = writer, acct, default_lob
    self.where = ""  # file:line of the resource being mapped

  def __call__(self, resource) -> Optional[str]:
    return getattr(self, resource.get_resource_type().lower())(resource)

  def patient(self, p: fhir_patient.Patient) -> Optional[str]:
    if not p.id:
      return "no_resource_id"
    sid = self.w.subject("Patient/" + p.id)
    sex = common.sex_code(p.gender or "")
    birth, death = _day(p.birthDate), _day(p.deceasedDateTime)
    if p.deceasedBoolean and death is None:
      self.acct.notes["deceased_without_date"] += 1
    return self.w.add_member(sid, birth, sex, death)

  def coverage(self, c: fhir_coverage.Coverage) -> Optional[str]:
    if c.status in _SKIPPED_STATUS:
      return f"status_{c.status}"
    member = _member(c.beneficiary)
    if member is None:
      return "no_patient_reference"
    start = _day(c.period.start) if c.period is not None else None
    if start is None:
      return "no_coverage_period"
    lob = self.default_lob
    for coding in _codings(c.type):
      if coding.system == "https://nahdo.org/sopt" and coding.code:
        lob = SOPT_LOB.get(coding.code[0], "OTHER")
    sid = self.w.subject(member)
    self.w.add(sid, start, conv.enrollment_code("START", lob))
    end = _day(c.period.end)
    if end is not None:
      self.w.add(sid, end, conv.enrollment_code("END", lob))
    return None

  def _code(self, systems: dict, concept) -> list[str]:
    out = []
    for coding in _codings(concept):
      prefix = systems.get(coding.system or "")
      code = (coding.code or "").strip()
      if prefix is None or not code:
        self.acct.notes["coding_of_another_system"] += 1
        continue
      if prefix in (conv.CPT, conv.HCPCS):  # CARIN puts HCPCS under the CPT URI too
        shaped = common.procedure_code(code)
        if shaped:
          out.append(shaped)
        else:
          self.acct.notes["procedure_not_cpt_or_hcpcs"] += 1
      elif prefix == conv.NDC:
        ndc = code_systems.normalize_ndc(code)
        if ndc:
          out.append(f"{conv.NDC}{conv.SEP}{ndc}")
        else:
          self.acct.notes["ndc_not_an_ndc"] += 1
      else:
        out.append(f"{prefix}{conv.SEP}{code.upper()}")
    return out

  def explanationofbenefit(self, e: fhir_eob.ExplanationOfBenefit) -> Optional[str]:
    if e.status in _SKIPPED_STATUS:
      return f"status_{e.status}"
    member = _member(e.patient)
    if member is None:
      return "no_patient_reference"
    items = e.item or []
    days = [_day(e.billablePeriod.start)] if e.billablePeriod is not None else []
    days += [_day(i.servicedDate) for i in items]
    days += [_day(i.servicedPeriod.start) for i in items if i.servicedPeriod is not None]
    days = [d for d in days if d is not None]
    if not days:
      return "no_service_date"
    # An EOB without an id is its own claim: keyed by its place in the input.
    day, sid = min(days), self.w.subject(member)
    claim = self.w.claim("ExplanationOfBenefit/" + e.id if e.id else "at/" + self.where)
    add = lambda code, value=None: self.w.add(sid, day, code, value, claim)  # noqa: E731
    kind = next((c.code for c in _codings(e.type) if c.system == CLAIM_TYPE_SYSTEM), "")
    sub = next((c.code for c in _codings(e.subType)), "")
    claim_type = CLAIM_TYPES.get((kind, sub)) or CLAIM_TYPES.get((kind, ""))
    if claim_type:
      add(f"{conv.CLAIM}{conv.SEP}{claim_type}")
    else:
      self.acct.notes["claim_type_unknown"] += 1
    pos = {c.code for i in items for c in _codings(i.locationCodeableConcept)
           if c.system == POS_SYSTEM and c.code}
    for code in sorted(pos):
      add(f"{conv.POS}{conv.SEP}{code.zfill(2)}")
    for d in e.diagnosis or []:
      for code in self._code(DIAGNOSIS_SYSTEMS, d.diagnosisCodeableConcept):
        add(code)
    for p in e.procedure or []:
      for code in self._code(PROCEDURE_SYSTEMS, p.procedureCodeableConcept):
        add(code)
    for i in items:
      for code in self._code(PROCEDURE_SYSTEMS, i.productOrService):
        add(code)
    # Claim totals where given, else the sum of the lines' adjudications.
    totals: dict[str, float] = {}
    for t in e.total or []:
      for c in _codings(t.category):
        if c.code in COST_CATEGORIES and t.amount is not None and t.amount.value is not None:
          totals[COST_CATEGORIES[c.code]] = float(t.amount.value)
    lines: dict[str, float] = {}
    for i in items:
      for a in i.adjudication or []:
        for c in _codings(a.category):
          if c.code in COST_CATEGORIES and a.amount is not None and a.amount.value is not None:
            code = COST_CATEGORIES[c.code]
            lines[code] = lines.get(code, 0.0) + float(a.amount.value)
    for code in sorted(set(totals) | set(lines)):
      add(code, totals.get(code, lines.get(code)))
    return None


def _resources(path: str) -> Iterator[tuple[int, str, dict]]:
  """(line or entry number, 'line' / 'entry', resource dict) of an NDJSON or JSON file."""
  if path.endswith(".ndjson"):
    with open(path, encoding="utf-8") as f:
      for n, text in enumerate(f, 1):
        if not text.strip():
          continue
        try:
          yield n, "line", json.loads(text)
        except json.JSONDecodeError as e:
          raise common.InputFormatError(path, f"not JSON: {e.msg}", n) from e
    return
  try:
    with open(path, encoding="utf-8") as f:
      doc = json.load(f)
  except json.JSONDecodeError as e:
    raise common.InputFormatError(path, f"not JSON: {e.msg}", e.lineno) from e
  if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
    for n, entry in enumerate(doc.get("entry") or [], 1):
      yield n, "entry", (entry or {}).get("resource") or {}
  else:
    yield 1, "resource", doc


def input_files(input_dir: str) -> list[str]:
  paths = sorted(glob.glob(os.path.join(input_dir, "**", "*.ndjson"), recursive=True) +
                 glob.glob(os.path.join(input_dir, "**", "*.json"), recursive=True))
  if not paths:
    raise ValueError(f"{input_dir}: no *.ndjson or *.json files (a FHIR bulk export or bundles)")
  return paths


def import_fhir(input_dir: str, output_dir: str, *, default_lob: str = "COMMERCIAL",
                shard_input_mb: float = 64.0, id_key: bytes = b"") -> dict:
  """Converts the FHIR resources under input_dir to a claims MEDS dataset; returns the report."""
  paths = input_files(input_dir)
  with common.MEDSWriter(output_dir, common.shards_for(paths, shard_input_mb),
                         id_key=id_key) as writer:
    acct = common.Accounting()
    mapper = _Mapper(writer, acct, default_lob)
    for path in paths:
      source = os.path.relpath(path, input_dir)
      for n, what, obj in _resources(path):
        rtype = obj.get("resourceType") if isinstance(obj, dict) else None
        model = MODELS.get(rtype)
        if model is None:
          acct.dropped(source, "other_resource_type")
          continue
        try:
          resource = model.model_validate(obj)
        except pydantic.ValidationError as e:
          err = e.errors()[0]
          field = ".".join(str(x) for x in err["loc"])
          raise common.InputFormatError(path, f"invalid {rtype}: {err['msg']}", n, field,
                                        what) from None
        mapper.where = f"{source}:{what}{n}"
        reason = mapper(resource)
        if reason:
          acct.dropped(source, reason)
        else:
          acct.converted(source)
    return writer.finish({"dataset_name": "fhir_eob", "etl_name": ETL_NAME,
                          "source": "FHIR R4 ExplanationOfBenefit / Patient / Coverage "
                                    "(CARIN Blue Button), validated by fhir.resources "
                                    f"{importlib.metadata.version('fhir.resources')} R4B"},
                         acct)
