"""The claims-extract importer: mapping, accounting, determinism and bad input."""

import json
import os

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from data_prep.configs import claims_mapping
from lmm_jax.importers import claims
from lmm_jax.importers import common
from tests.importers import worlds

HEADER = ("CLM_ID,MBR_ID,CLM_FROM_DT,CLM_TYPE_CD,CLM_POS_CD,ICD_DGNS_CD1,ICD_DGNS_CD2,"
          "ICD_DGNS_CD3,ICD_DGNS_CD4,ICD_PRCDR_CD1,ICD_PRCDR_CD2\n")
LINE = "CLM_ID,MBR_ID,LINE_SRVC_DT,HCPCS_CD,NDC_CD,LINE_POS_CD,LINE_ALWD_AMT,LINE_PD_AMT\n"


def _extract(tmp_path, headers: str, lines: str, members: str = "", enrollment: str = ""):
  d = tmp_path / "extract"
  d.mkdir()
  (d / "claim_header.csv").write_text(HEADER + headers)
  (d / "claim_line.csv").write_text(LINE + lines)
  (d / "member.csv").write_text("MBR_ID,BIRTH_DT,SEX_CD,DEATH_DT\n" + members)
  (d / "enrollment.csv").write_text("MBR_ID,ENRL_START_DT,ENRL_END_DT,LOB_CD\n" + enrollment)
  return str(d)


def test_claim_rows_follow_the_conventions_and_every_record_is_counted(tmp_path):
  src = _extract(
      tmp_path,
      "C1,M1,2020-03-02,I,21,E11.9,I10,,,0SRC0J9,\n"
      "C2,,2020-04-01,P,11,I10,,,,,\n"          # no member id: dropped
      "C3,M1,,P,11,I10,,,,,\n",                 # no date: dropped
      "C1,M1,2020-03-04,99223,,21,1000.50,800\n"
      "C1,M1,,J1745,,,500,400\n"               # no line date: the claim's
      "C1,M1,2020-03-02,XYZ,,,0,0\n",          # not CPT/HCPCS: noted, row converted
      "M1,1950-06-01,2,\n",
      "M1,2019-01-01,2021-12-31,MA\n")
  out = str(tmp_path / "meds")
  report = claims.import_claims(src, out, claims_mapping.get_config())
  assert report["records"] == 8 and report["converted"] == 6
  assert report["dropped"] == {"no_member_id": 1, "no_service_date": 1}
  assert report["notes"] == {"procedure_not_cpt_or_hcpcs": 1}
  rows = worlds.meds_rows(out)
  assert len({r["subject_id"] for r in rows}) == 1
  claim = [r for r in rows if r["claim_id"] is not None]
  assert len({r["time"] for r in claim}) == 1  # one date per claim: its earliest
  assert claim[0]["time"].date().isoformat() == "2020-03-02"
  codes = [r["code"] for r in claim]
  assert {"CLAIM//INPATIENT", "POS//21", "ICD10CM//E11.9", "ICD10CM//I10", "ICD10PCS//0SRC0J9",
          "CPT//99223", "HCPCS//J1745"} <= set(codes)
  assert codes.count("POS//21") == 1  # on the header and a line: written once
  costs = {r["code"]: r["numeric_value"] for r in claim if r["code"].startswith("COST//")}
  assert costs == {"COST//ALLOWED": pytest.approx(1500.5), "COST//PAID": pytest.approx(1200.0)}
  member = {r["code"] for r in rows if r["claim_id"] is None}
  assert member == {"GENDER//F", "MEDS_BIRTH", "ENROLLMENT//START//MEDICARE",
                    "ENROLLMENT//END//MEDICARE"}
  with open(os.path.join(out, "metadata", "dataset.json")) as f:
    assert "claims extract" in json.load(f)["source"]
  with open(os.path.join(out, "metadata", common.REPORT_FILE)) as f:
    saved = json.load(f)
  assert saved["by_file"]["claim_header.csv"]["records"] == 3
  assert "M1" not in json.dumps(saved)  # member ids are never written in the clear


@pytest.mark.parametrize("headers,lines,message", [
    ("C1,M1,2020-13-45,P,11,I10,,,,,\n", "", r"claim_header.csv, line 2, field 'CLM_FROM_DT': not a date"),
    ("C1,M1,2020-01-02,Q,11,I10,,,,,\n", "", r"line 2, field 'CLM_TYPE_CD': claim type 'Q' is not in"),
    ("", "C1,M1,2020-01-02,99213,,11,12x,\n", r"claim_line.csv, line 2, field 'LINE_ALWD_AMT': not an amount"),
])
def test_malformed_input_is_one_line_naming_file_line_and_field(tmp_path, headers, lines,
                                                                message):
  src = _extract(tmp_path, headers, lines)
  with pytest.raises(common.InputFormatError, match=message) as e:
    claims.import_claims(src, str(tmp_path / "meds"), claims_mapping.get_config())
  assert "\n" not in str(e.value) and "M1" not in str(e.value)
  assert not os.path.exists(tmp_path / "meds" / ".spill")  # no partial output left behind
  assert not os.listdir(tmp_path / "meds" / "data")


def test_a_missing_mapped_column_names_file_and_column(tmp_path):
  src = _extract(tmp_path, "", "")
  (tmp_path / "extract" / "claim_line.csv").write_text("CLM_ID,MBR_ID\n")
  with pytest.raises(common.InputFormatError, match=r"claim_line.csv, field 'LINE_[A-Z_]+': no such column"):
    claims.import_claims(src, str(tmp_path / "meds"), claims_mapping.get_config())


def test_output_is_deterministic_and_independent_of_the_shard_count(tmp_path):
  src = str(tmp_path / "extract")
  worlds.write_extract(src, worlds.members(30, seed=1))
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  ra = claims.import_claims(src, a, claims_mapping.get_config())
  rb = claims.import_claims(src, b, claims_mapping.get_config(), shard_input_mb=0.01)
  assert rb["shards"] > 1 and ra["rows_written"] == rb["rows_written"]
  key = lambda r: (r["subject_id"], str(r["time"]), r["claim_id"] or -1, r["code"])  # noqa: E731
  assert sorted(worlds.meds_rows(a), key=key) == sorted(worlds.meds_rows(b), key=key)
  c = str(tmp_path / "c")
  claims.import_claims(src, c, claims_mapping.get_config())
  for name in sorted(os.listdir(os.path.join(a, "data"))):
    assert pq.read_table(os.path.join(a, "data", name)).equals(
        pq.read_table(os.path.join(c, "data", name)))


def test_parquet_extract_gives_the_csv_rows_and_numbers_errors_by_row(tmp_path):
  src = tmp_path / "csv"
  worlds.write_extract(str(src), worlds.members(20, seed=2))
  pq_dir = tmp_path / "parquet"
  pq_dir.mkdir()
  for name in os.listdir(src):
    table = pa_csv.read_csv(str(src / name), convert_options=pa_csv.ConvertOptions(
        strings_can_be_null=True))  # types inferred: dates, numbers (NDCs lose leading zeros)
    pq.write_table(table, str(pq_dir / name.replace(".csv", ".parquet")))
  mapping = claims_mapping.get_config()
  mapping.format = "parquet"
  for t in ("headers", "lines", "members", "enrollment"):
    mapping[t].files = mapping[t].files.replace(".csv", ".parquet")
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  claims.import_claims(str(src), a, claims_mapping.get_config())
  claims.import_claims(str(pq_dir), b, mapping)
  key = lambda r: (r["subject_id"], str(r["time"]), r["claim_id"] or -1, r["code"])  # noqa: E731
  assert sorted(worlds.meds_rows(a), key=key) == sorted(worlds.meds_rows(b), key=key)
  table = pq.read_table(str(pq_dir / "claim_line.parquet"))
  bad = table.set_column(table.schema.get_field_index("LINE_ALWD_AMT"), "LINE_ALWD_AMT",
                         pa.array(["12x"] * table.num_rows))
  pq.write_table(bad, str(pq_dir / "claim_line.parquet"))
  with pytest.raises(common.InputFormatError, match=r"claim_line.parquet, row 1, field 'LINE_ALWD_AMT'"):
    claims.import_claims(str(pq_dir), b, mapping)
