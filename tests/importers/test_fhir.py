"""The FHIR ExplanationOfBenefit importer on CARIN-shaped fixtures, bundles and bad input."""

import json
import os
import shutil

import pytest

from lmm_jax.importers import common
from lmm_jax.importers import fhir
from tests.importers import worlds

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "fhir")


def test_carin_examples_map_to_claims_conventions(tmp_path):
  out = str(tmp_path / "meds")
  report = fhir.import_fhir(FIXTURES, out)
  assert report["by_file"]["ExplanationOfBenefit.ndjson"] == {
      "records": 7, "converted": 5, "dropped": {"no_service_date": 1,
                                                "status_entered-in-error": 1}}
  assert report["by_file"]["Patient.ndjson"]["dropped"] == {"no_member_facts": 1}
  assert report["notes"]["coding_of_another_system"] >= 2  # revenue-less data-absent, CDT
  rows = worlds.meds_rows(out)
  assert len({r["subject_id"] for r in rows}) == 1
  claims = {}
  for r in rows:
    if r["claim_id"] is not None:
      claims.setdefault(r["claim_id"], []).append(r)
  by_type = {}
  for rs in claims.values():
    by_type.setdefault(next(r["code"] for r in rs if r["code"].startswith("CLAIM//")), []).extend(rs)
  assert set(by_type) == {"CLAIM//INPATIENT", "CLAIM//OUTPATIENT", "CLAIM//PROFESSIONAL",
                          "CLAIM//PHARMACY"} and len(claims) == 5  # oral is professional
  codes = lambda t: {r["code"]: r["numeric_value"] for r in by_type[t]}  # noqa: E731
  inpatient = codes("CLAIM//INPATIENT")
  assert {"ICD10CM//S06.0X1A", "ICD10CM//E119", "ICD10PCS//0SRC0J9"} <= set(inpatient)
  assert inpatient["COST//ALLOWED"] == pytest.approx(12000.5)  # the total, not "submitted"
  assert inpatient["COST//PAID"] == pytest.approx(11000)
  outpatient = codes("CLAIM//OUTPATIENT")
  assert {"CPT//93000", "HCPCS//J1745"} <= set(outpatient)
  assert outpatient["COST//ALLOWED"] == pytest.approx(1000)  # summed line adjudications
  assert len({r["time"] for r in by_type["CLAIM//OUTPATIENT"]}) == 1  # lines on 2 days
  assert {"POS//11", "CPT//99213"} <= set(codes("CLAIM//PROFESSIONAL"))
  assert "NDC//00002143380" in codes("CLAIM//PHARMACY")
  member = {r["code"]: r["time"] for r in rows if r["claim_id"] is None}
  assert member["GENDER//M"] is None and member["MEDS_BIRTH"].year == 1943
  assert member["MEDS_DEATH"].date().isoformat() == "2021-06-30"
  assert member["ENROLLMENT//START//MEDICARE"].date().isoformat() == "2019-01-01"
  text = json.dumps(report)
  with open(os.path.join(out, "metadata", "dataset.json")) as f:
    assert "ExplanationOfBenefit" in json.load(f)["source"]
  assert "88800933501" not in text and "Patient1" not in text


def test_bundles_read_like_ndjson(tmp_path):
  people = worlds.members(5, seed=2)
  resources = worlds.fhir_resources(people)
  nd, bundle = tmp_path / "nd", tmp_path / "bundle"
  worlds.write_fhir(str(nd), people)
  bundle.mkdir()
  entries = [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r}
             for rs in resources.values() for r in rs]
  (bundle / "bundle.json").write_text(json.dumps({"resourceType": "Bundle", "type": "collection",
                                                  "entry": entries}))
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  ra, rb = fhir.import_fhir(str(nd), a), fhir.import_fhir(str(bundle), b)
  assert ra["converted"] == rb["converted"] == len(entries)
  key = lambda r: (r["subject_id"], str(r["time"]), r["claim_id"] or -1, r["code"])  # noqa: E731
  assert sorted(worlds.meds_rows(a), key=key) == sorted(worlds.meds_rows(b), key=key)


@pytest.mark.parametrize("line,message", [
    ("{not json", r"ExplanationOfBenefit.ndjson, line 8: not JSON"),
    ('{"resourceType": "ExplanationOfBenefit", "id": "x", "status": "active", "billablePeriod": '
     '{"start": "2020-13-01"}}',
     r"ExplanationOfBenefit.ndjson, line 8, field '[a-zA-Z.]*': invalid ExplanationOfBenefit"),
])
def test_malformed_resources_name_file_line_and_field(tmp_path, line, message):
  src = tmp_path / "src"
  shutil.copytree(FIXTURES, src)
  with open(src / "ExplanationOfBenefit.ndjson", "a") as f:
    f.write(line + "\n")
  with pytest.raises(common.InputFormatError, match=message) as e:
    fhir.import_fhir(str(src), str(tmp_path / "meds"))
  assert "\n" not in str(e.value)


def test_date_error_names_the_element(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  r = worlds.fhir_resources(worlds.members(1))["ExplanationOfBenefit"][0]
  r["billablePeriod"] = {"start": "2020-13-01"}
  (src / "ExplanationOfBenefit.ndjson").write_text(json.dumps(r) + "\n")
  with pytest.raises(common.InputFormatError, match=r"line 1, field 'billablePeriod.start'"):
    fhir.import_fhir(str(src), str(tmp_path / "meds"))


def test_eobs_without_ids_stay_separate_claims(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  eobs = worlds.fhir_resources(worlds.members(1, seed=8))["ExplanationOfBenefit"][:2]
  for r in eobs:
    del r["id"]
    r["billablePeriod"] = {"start": "2020-01-01"}
  (src / "ExplanationOfBenefit.ndjson").write_text("".join(json.dumps(r) + "\n" for r in eobs))
  out = str(tmp_path / "meds")
  fhir.import_fhir(str(src), out)
  assert len({r["claim_id"] for r in worlds.meds_rows(out)}) == 2
