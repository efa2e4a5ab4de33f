"""Small test worlds written in each importer's input format (claims extract, FHIR, Synthea).

One list of members (a seeded draw: birth, sex, coverage, claims with codes and amounts) is
written in the three published shapes, so each importer's output can be built and trained on.
The draw favours no model: codes and amounts are independent draws from fixed pools.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import os

import numpy as np
import pyarrow.parquet as pq

from lmm_jax.data import meds_io

DX = ("E11.9", "I10", "J45.909", "M54.5", "N18.3", "F32.9", "E78.5", "Z00.00", "K21.9", "I50.9")
CPT = ("99213", "99214", "80053", "93000", "71046", "J1745", "G0439")
NDC = ("00002143380", "00093017101", "00378018001", "00071015523")
TYPES = ("PROFESSIONAL", "OUTPATIENT", "INPATIENT", "PHARMACY")
FIRST_YEAR, LAST_YEAR = 2019, 2021


@dataclasses.dataclass
class Claim:
  key: str
  day: datetime.date
  kind: str
  dx: list[str]
  procs: list[str]
  ndc: str
  allowed: float
  paid: float


@dataclasses.dataclass
class Member:
  key: str
  birth: datetime.date
  sex: str  # F / M
  death: datetime.date | None
  claims: list[Claim]


def members(n: int, seed: int = 0) -> list[Member]:
  rng = np.random.default_rng(seed)
  out = []
  start = datetime.date(FIRST_YEAR, 1, 1)
  span = (datetime.date(LAST_YEAR, 12, 31) - start).days
  for i in range(n):
    claims = []
    for j in range(int(rng.integers(6, 20))):
      kind = TYPES[int(rng.choice(4, p=[0.5, 0.2, 0.05, 0.25]))]
      allowed = float(np.round(np.exp(rng.normal(5 if kind != "INPATIENT" else 9, 1.0)), 2))
      claims.append(Claim(
          key=f"C{i:05d}{j:03d}", day=start + datetime.timedelta(days=int(rng.integers(span))),
          kind=kind, dx=[] if kind == "PHARMACY" else list(rng.choice(DX, int(rng.integers(1, 4)),
                                                                      replace=False)),
          procs=[] if kind == "PHARMACY" else [str(rng.choice(CPT))],
          ndc=str(rng.choice(NDC)) if kind == "PHARMACY" else "", allowed=allowed,
          paid=float(np.round(allowed * 0.8, 2))))
    claims.sort(key=lambda c: (c.day, c.key))
    out.append(Member(key=f"M{i:05d}", birth=datetime.date(int(rng.integers(1940, 2010)),
                                                         int(rng.integers(1, 13)), 15),
                      sex="F" if rng.random() < 0.5 else "M", death=None, claims=claims))
  return out


def _write_csv(path: str, header: list[str], rows: list[list]) -> None:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)


_KIND_CODE = {"PROFESSIONAL": "P", "OUTPATIENT": "O", "INPATIENT": "I", "PHARMACY": "RX"}
_POS = {"PROFESSIONAL": "11", "OUTPATIENT": "22", "INPATIENT": "21", "PHARMACY": "01"}


def write_extract(out_dir: str, people: list[Member]) -> None:
  """Tables in the shape of data_prep/configs/claims_mapping.py (header, line, member, enrollment)."""
  os.makedirs(out_dir, exist_ok=True)
  headers, lines = [], []
  for m in people:
    for c in m.claims:
      dx = (c.dx + ["", "", "", ""])[:4]
      headers.append([c.key, m.key, c.day.isoformat(), _KIND_CODE[c.kind], _POS[c.kind], *dx,
                      "", ""])
      if c.kind == "PHARMACY":
        lines.append([c.key, m.key, c.day.isoformat(), "", c.ndc, "01", c.allowed, c.paid])
      else:
        # Two lines splitting the amount: the importer sums a claim's lines.
        half = round(c.allowed / 2, 2)
        lines.append([c.key, m.key, c.day.isoformat(), c.procs[0], "", _POS[c.kind], half,
                      round(half * 0.8, 2)])
        lines.append([c.key, m.key, "", "", "", "", round(c.allowed - half, 2),
                      round((c.allowed - half) * 0.8, 2)])
  _write_csv(os.path.join(out_dir, "claim_header.csv"),
             ["CLM_ID", "MBR_ID", "CLM_FROM_DT", "CLM_TYPE_CD", "CLM_POS_CD", "ICD_DGNS_CD1",
              "ICD_DGNS_CD2", "ICD_DGNS_CD3", "ICD_DGNS_CD4", "ICD_PRCDR_CD1", "ICD_PRCDR_CD2"],
             headers)
  _write_csv(os.path.join(out_dir, "claim_line.csv"),
             ["CLM_ID", "MBR_ID", "LINE_SRVC_DT", "HCPCS_CD", "NDC_CD", "LINE_POS_CD",
              "LINE_ALWD_AMT", "LINE_PD_AMT"], lines)
  _write_csv(os.path.join(out_dir, "member.csv"), ["MBR_ID", "BIRTH_DT", "SEX_CD", "DEATH_DT"],
             [[m.key, m.birth.isoformat(), "2" if m.sex == "F" else "1",
               m.death.isoformat() if m.death else ""] for m in people])
  _write_csv(os.path.join(out_dir, "enrollment.csv"),
             ["MBR_ID", "ENRL_START_DT", "ENRL_END_DT", "LOB_CD"],
             [[m.key, f"{FIRST_YEAR}-01-01", f"{LAST_YEAR}-12-31", "COM"] for m in people])


_FHIR_TYPE = {"PROFESSIONAL": ("professional", None), "OUTPATIENT": ("institutional", "outpatient"),
              "INPATIENT": ("institutional", "inpatient"), "PHARMACY": ("pharmacy", None)}
_ADJ = "http://terminology.hl7.org/CodeSystem/adjudication"


def _adj(code: str, value: float) -> dict:
  return {"category": {"coding": [{"system": _ADJ, "code": code}]},
          "amount": {"value": value, "currency": "USD"}}


def fhir_resources(people: list[Member]) -> dict[str, list[dict]]:
  """CARIN-shaped Patient, Coverage and ExplanationOfBenefit resources of the members."""
  out = {"Patient": [], "Coverage": [], "ExplanationOfBenefit": []}
  for m in people:
    out["Patient"].append({"resourceType": "Patient", "id": m.key, "birthDate": m.birth.isoformat(),
                           "gender": "female" if m.sex == "F" else "male"})
    out["Coverage"].append({
        "resourceType": "Coverage", "id": f"cov-{m.key}", "status": "active",
        "type": {"coding": [{"system": "https://nahdo.org/sopt", "code": "51"}]},
        "beneficiary": {"reference": f"Patient/{m.key}"},
        "payor": [{"reference": "Organization/Payer1"}],
        "period": {"start": f"{FIRST_YEAR}-01-01", "end": f"{LAST_YEAR}-12-31"}})
    for c in m.claims:
      kind, sub = _FHIR_TYPE[c.kind]
      item = {"sequence": 1, "servicedDate": c.day.isoformat(),
              "locationCodeableConcept": {"coding": [{"system": (
                  "https://www.cms.gov/Medicare/Coding/place-of-service-codes/"
                  "Place_of_Service_Code_Set"), "code": _POS[c.kind]}]},
              "adjudication": [_adj("eligible", c.allowed), _adj("benefit", c.paid)]}
      if c.kind == "PHARMACY":
        item["productOrService"] = {"coding": [{"system": "http://hl7.org/fhir/sid/ndc",
                                                "code": c.ndc}]}
      else:
        item["productOrService"] = {"coding": [{"system": "http://www.ama-assn.org/go/cpt",
                                                "code": c.procs[0]}]}
      eob = {"resourceType": "ExplanationOfBenefit", "id": c.key, "status": "active",
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type",
                                  "code": kind}]},
             "use": "claim", "patient": {"reference": f"Patient/{m.key}"},
             "created": c.day.isoformat(), "insurer": {"reference": "Organization/Payer1"},
             "provider": {"reference": "Organization/Provider1"}, "outcome": "complete",
             "insurance": [{"focal": True, "coverage": {"reference": f"Coverage/cov-{m.key}"}}],
             "billablePeriod": {"start": c.day.isoformat()}, "item": [item],
             "diagnosis": [{"sequence": k + 1, "diagnosisCodeableConcept": {"coding": [{
                 "system": "http://hl7.org/fhir/sid/icd-10-cm", "code": d}]}}
                 for k, d in enumerate(c.dx)]}
      if sub:
        eob["subType"] = {"coding": [{"system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/"
                                                "C4BBInstitutionalClaimSubType", "code": sub}]}
      out["ExplanationOfBenefit"].append(eob)
  return out


def write_fhir(out_dir: str, people: list[Member]) -> None:
  """A bulk export: one NDJSON file per resource type."""
  os.makedirs(out_dir, exist_ok=True)
  for rtype, resources in fhir_resources(people).items():
    with open(os.path.join(out_dir, f"{rtype}.ndjson"), "w") as f:
      for r in resources:
        f.write(json.dumps(r) + "\n")


# Synthea's own codes (SNOMED CT, RxNorm) for the pools above; headers of Synthea 3's CSV export.
SNOMED_DX = {"E11.9": ("44054006", "Diabetes mellitus type 2 (disorder)"),
             "I10": ("59621000", "Essential hypertension (disorder)"),
             "J45.909": ("195967001", "Asthma (disorder)"),
             "M54.5": ("279039007", "Low back pain (finding)"),
             "N18.3": ("433144002", "Chronic kidney disease stage 3 (disorder)"),
             "F32.9": ("35489007", "Depressive disorder (disorder)"),
             "E78.5": ("55822004", "Hyperlipidemia (disorder)"),
             "Z00.00": ("314529007", "Medication review due (situation)"),
             "K21.9": ("235595009", "Gastroesophageal reflux disease (disorder)"),
             "I50.9": ("84114007", "Heart failure (disorder)")}
SYNTHEA_CLASS = {"PROFESSIONAL": ("ambulatory", "185345009", "Encounter for symptom (procedure)"),
                 "OUTPATIENT": ("outpatient", "185347001", "Encounter for problem (procedure)"),
                 "INPATIENT": ("inpatient", "183452005", "Emergency hospital admission (procedure)"),
                 "PHARMACY": ("wellness", "410620009", "Well child visit (procedure)")}
RXNORM = {"00002143380": ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet"),
          "00093017101": ("314076", "lisinopril 10 MG Oral Tablet"),
          "00378018001": ("197361", "amlodipine 5 MG Oral Tablet"),
          "00071015523": ("259255", "atorvastatin 80 MG Oral Tablet")}
SYNTHEA_HEADERS = {
    "patients": "Id,BIRTHDATE,DEATHDATE,SSN,DRIVERS,PASSPORT,PREFIX,FIRST,MIDDLE,LAST,SUFFIX,MAIDEN,MARITAL,RACE,ETHNICITY,GENDER,BIRTHPLACE,ADDRESS,CITY,STATE,COUNTY,FIPS,ZIP,LAT,LON,HEALTHCARE_EXPENSES,HEALTHCARE_COVERAGE,INCOME",
    "payers": "Id,NAME,OWNERSHIP,ADDRESS,CITY,STATE_HEADQUARTERED,ZIP,PHONE,AMOUNT_COVERED,AMOUNT_UNCOVERED,REVENUE,COVERED_ENCOUNTERS,UNCOVERED_ENCOUNTERS,COVERED_MEDICATIONS,UNCOVERED_MEDICATIONS,COVERED_PROCEDURES,UNCOVERED_PROCEDURES,COVERED_IMMUNIZATIONS,UNCOVERED_IMMUNIZATIONS,UNIQUE_CUSTOMERS,QOLS_AVG,MEMBER_MONTHS",
    "payer_transitions": "PATIENT,MEMBERID,START_DATE,END_DATE,PAYER,SECONDARY_PAYER,PLAN_OWNERSHIP,OWNER_NAME",
    "encounters": "Id,START,STOP,PATIENT,ORGANIZATION,PROVIDER,PAYER,ENCOUNTERCLASS,CODE,DESCRIPTION,BASE_ENCOUNTER_COST,TOTAL_CLAIM_COST,PAYER_COVERAGE,REASONCODE,REASONDESCRIPTION",
    "conditions": "START,STOP,PATIENT,ENCOUNTER,SYSTEM,CODE,DESCRIPTION",
    "procedures": "START,STOP,PATIENT,ENCOUNTER,SYSTEM,CODE,DESCRIPTION,BASE_COST,REASONCODE,REASONDESCRIPTION",
    "medications": "START,STOP,PATIENT,PAYER,ENCOUNTER,CODE,DESCRIPTION,BASE_COST,PAYER_COVERAGE,DISPENSES,TOTALCOST,REASONCODE,REASONDESCRIPTION",
    "claims": "Id,PATIENTID,PROVIDERID,PRIMARYPATIENTINSURANCEID,SECONDARYPATIENTINSURANCEID,DEPARTMENTID,PATIENTDEPARTMENTID,DIAGNOSIS1,DIAGNOSIS2,DIAGNOSIS3,DIAGNOSIS4,DIAGNOSIS5,DIAGNOSIS6,DIAGNOSIS7,DIAGNOSIS8,REFERRINGPROVIDERID,APPOINTMENTID,CURRENTILLNESSDATE,SERVICEDATE,SUPERVISINGPROVIDERID,STATUS1,STATUS2,STATUSP,OUTSTANDING1,OUTSTANDING2,OUTSTANDINGP,LASTBILLEDDATE1,LASTBILLEDDATE2,LASTBILLEDDATEP,HEALTHCARECLAIMTYPEID1,HEALTHCARECLAIMTYPEID2",
    "claims_transactions": "ID,CLAIMID,CHARGEID,PATIENTID,TYPE,AMOUNT,METHOD,FROMDATE,TODATE,PLACEOFSERVICE,PROCEDURECODE,MODIFIER1,MODIFIER2,DIAGNOSISREF1,DIAGNOSISREF2,DIAGNOSISREF3,DIAGNOSISREF4,UNITS,DEPARTMENTID,NOTES,UNITAMOUNT,TRANSFEROUTID,TRANSFERTYPE,PAYMENTS,ADJUSTMENTS,TRANSFERS,OUTSTANDING,APPOINTMENTID,LINENOTE,PATIENTINSURANCEID,FEESCHEDULEID,PROVIDERID,SUPERVISINGPROVIDERID",
}


def synthea_tables(people: list[Member]) -> dict[str, list[dict]]:
  """The members as Synthea CSV rows (dicts keyed by the Synthea header names)."""
  t: dict[str, list[dict]] = {name: [] for name in SYNTHEA_HEADERS}
  t["payers"] = [{"Id": "payer-a", "NAME": "Aetna"}, {"Id": "payer-m", "NAME": "Medicare"},
                 {"Id": "payer-n", "NAME": "NO_INSURANCE"}]
  for m in people:
    t["patients"].append({"Id": m.key, "BIRTHDATE": m.birth.isoformat(),
                          "DEATHDATE": m.death.isoformat() if m.death else "", "SSN": "999-00-0000",
                          "FIRST": "Ann", "LAST": "Example", "GENDER": m.sex})
    t["payer_transitions"].append({"PATIENT": m.key, "MEMBERID": f"mid-{m.key}",
                                   "START_DATE": f"{FIRST_YEAR}-01-01T00:00:00Z",
                                   "END_DATE": f"{LAST_YEAR}-12-31T23:59:59Z", "PAYER": "payer-a"})
    for c in m.claims:
      ts = f"{c.day.isoformat()}T09:00:00Z"
      cls, code, desc = SYNTHEA_CLASS[c.kind]
      t["encounters"].append({"Id": c.key, "START": ts, "PATIENT": m.key, "PAYER": "payer-a",
                              "ENCOUNTERCLASS": cls, "CODE": code, "DESCRIPTION": desc,
                              "TOTAL_CLAIM_COST": c.allowed})
      for d in c.dx:
        sn, sdesc = SNOMED_DX[d]
        t["conditions"].append({"START": c.day.isoformat(), "PATIENT": m.key,
                                "ENCOUNTER": c.key, "SYSTEM": "http://snomed.info/sct",
                                "CODE": sn, "DESCRIPTION": sdesc})
      if c.procs:
        t["procedures"].append({"START": ts, "PATIENT": m.key, "ENCOUNTER": c.key,
                                "SYSTEM": "http://snomed.info/sct", "CODE": "430193006",
                                "DESCRIPTION": "Medication reconciliation (procedure)"})
      if c.ndc:
        rx, rdesc = RXNORM[c.ndc]
        t["medications"].append({"START": ts, "PATIENT": m.key, "ENCOUNTER": c.key,
                                 "CODE": rx, "DESCRIPTION": rdesc, "DISPENSES": 1})
      dx = {f"DIAGNOSIS{i + 1}": SNOMED_DX[d][0] for i, d in enumerate(c.dx)}
      t["claims"].append({"Id": f"claim-{c.key}", "PATIENTID": m.key, "APPOINTMENTID": c.key,
                          "SERVICEDATE": ts, "HEALTHCARECLAIMTYPEID1": 1, **dx})
      charge = round(c.allowed * 1.25, 2)
      base = {"CLAIMID": f"claim-{c.key}", "PATIENTID": m.key, "FROMDATE": ts, "TODATE": ts,
              "APPOINTMENTID": c.key, "CHARGEID": 1}
      t["claims_transactions"] += [
          {**base, "ID": f"{c.key}-1", "TYPE": "CHARGE", "AMOUNT": charge, "PROCEDURECODE": code},
          {**base, "ID": f"{c.key}-2", "TYPE": "ADJUSTMENT", "METHOD": "SYSTEM",
           "ADJUSTMENTS": round(charge - c.allowed, 2)},
          {**base, "ID": f"{c.key}-3", "TYPE": "PAYMENT", "METHOD": "ECHECK", "PAYMENTS": c.paid},
          {**base, "ID": f"{c.key}-4", "TYPE": "TRANSFEROUT", "TRANSFERS": round(c.allowed - c.paid, 2)}]
  return t


def write_synthea(out_dir: str, people: list[Member]) -> None:
  os.makedirs(out_dir, exist_ok=True)
  tables = synthea_tables(people)
  for name, header in SYNTHEA_HEADERS.items():
    with open(os.path.join(out_dir, f"{name}.csv"), "w", newline="") as f:
      w = csv.DictWriter(f, header.split(","), restval="")
      w.writeheader()
      w.writerows(tables[name])


def meds_rows(meds_dir: str) -> list[dict]:
  """All rows of a MEDS dataset's data files, in file order."""
  rows = []
  for path in meds_io.data_files(meds_dir):
    rows += pq.read_table(path).to_pylist()
  return rows
