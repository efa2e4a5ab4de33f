"""The Synthea CSV importer on a small Synthea-shaped export, including bad input."""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from lmm_jax.importers import common
from lmm_jax.importers import synthea
from tests.importers import worlds

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "synthea")


def _copy(tmp_path) -> str:
  src = str(tmp_path / "src")
  shutil.copytree(FIXTURES, src)
  return src


def _append(src: str, name: str, line: str) -> None:
  with open(os.path.join(src, f"{name}.csv"), "a") as f:
    f.write(line + "\n")


def test_synthea_export_maps_encounters_to_claims_with_costs(tmp_path):
  src = _copy(tmp_path)
  _append(src, "payer_transitions", "M00000,mid,2015-01-01T00:00:00Z,2018-12-31T00:00:00Z,payer-n,,,")
  out = str(tmp_path / "meds")
  report = synthea.import_synthea(src, out)
  tx = report["by_file"]["claims_transactions.csv"]
  assert tx["dropped"] == {"balance_transfer": tx["records"] // 4}
  assert report["by_file"]["payer_transitions.csv"]["dropped"] == {"uninsured_span": 1}
  assert report["records"] == report["converted"] + sum(report["dropped"].values())
  people = worlds.members(2, seed=5)
  rows = worlds.meds_rows(out)
  assert len({r["subject_id"] for r in rows}) == 2
  claims = {}
  for r in rows:
    if r["claim_id"] is not None:
      claims.setdefault(r["claim_id"], []).append(r)
  assert len(claims) == sum(len(m.claims) for m in people)  # one claim per encounter
  allowed = sorted(round(r["numeric_value"], 2) for rs in claims.values() for r in rs
                   if r["code"] == "COST//ALLOWED")
  assert allowed == pytest.approx(sorted(c.allowed for m in people for c in m.claims), abs=0.02)
  keys = [(r["subject_id"], r["time"], r["code"], r["claim_id"]) for r in rows]
  assert len(keys) == len(set(keys))  # a diagnosis in conditions.csv and claims.csv: once
  for rs in claims.values():
    assert len({r["time"] for r in rs}) == 1
    assert sum(r["code"].startswith("CLAIM//") for r in rs) == 1
  codes = {r["code"] for r in rows}
  assert {"ENROLLMENT//START//COMMERCIAL", "POS//11", "GENDER//F"} <= codes
  assert any(c.startswith("SNOMED//") for c in codes) and any(c.startswith("RXNORM//")
                                                              for c in codes)
  meta = pq.read_table(os.path.join(out, "metadata", "codes.parquet")).to_pylist()
  desc = {m["code"]: m["description"] for m in meta}
  assert any(c.startswith("SNOMED//") and desc[c] for c in desc)
  with open(os.path.join(out, "metadata", "dataset.json")) as f:
    assert "Synthea" in json.load(f)["source"]
  assert "M00000" not in json.dumps(report)


def test_older_exports_with_coverage_years(tmp_path):
  src = _copy(tmp_path)
  with open(os.path.join(src, "payer_transitions.csv"), "w") as f:
    f.write("PATIENT,MEMBERID,START_YEAR,END_YEAR,PAYER,SECONDARY_PAYER,OWNERSHIP,OWNERNAME\n"
            "M00000,,2019,2021,payer-m,,Self,\n")
  out = str(tmp_path / "meds")
  synthea.import_synthea(src, out)
  spans = sorted((r["code"], r["time"].date().isoformat()) for r in worlds.meds_rows(out)
                 if r["code"].startswith("ENROLLMENT"))
  assert spans == [("ENROLLMENT//END//MEDICARE", "2021-12-31"),
                   ("ENROLLMENT//START//MEDICARE", "2019-01-01")]


@pytest.mark.parametrize("name,line,message", [
    ("encounters", "E1,2020-02-30T00:00:00Z,,M00000,,,,ambulatory,1,x,,,,,",
     r"encounters.csv, line \d+, field 'START': not a date"),
    ("claims_transactions", "T1,C1,1,M00000,PAYMENT,,,2020-01-01,,,,,,,,,,,,,,,,ten,,,,E1,,,,,",
     r"claims_transactions.csv, line \d+, field 'PAYMENTS': not an amount"),
])
def test_malformed_rows_name_file_line_and_column(tmp_path, name, line, message):
  src = _copy(tmp_path)
  _append(src, name, line)
  with pytest.raises(common.InputFormatError, match=message) as e:
    synthea.import_synthea(src, str(tmp_path / "meds"))
  assert "M00000" not in str(e.value)


def test_missing_column_and_missing_file(tmp_path):
  src = _copy(tmp_path)
  with open(os.path.join(src, "claims.csv"), "w") as f:
    f.write("Id,PATIENTID\n")
  with pytest.raises(common.InputFormatError, match=r"claims.csv, field 'APPOINTMENTID'"):
    synthea.import_synthea(src, str(tmp_path / "meds"))
  os.remove(os.path.join(src, "encounters.csv"))
  with pytest.raises(ValueError, match=r"no encounters.csv"):
    synthea.import_synthea(src, str(tmp_path / "meds"))
