"""Other ETLs' spellings, backoff, every drop reason, and malformed input.

The malformed-input tests run with one worker (in-process) and with two worker processes, each
under a time limit: an error in a worker once hung the build (issue 18).
"""

import dataclasses
import datetime as dt
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.configs import build_dataset as build_config
from lmm_jax import conditions
from lmm_jax.data import build
from lmm_jax.data import code_systems as cs
from lmm_jax.data import meds_io
from lmm_jax.data import records
from lmm_jax.data import tokenizer as tok_lib
from lmm_jax.data import vocab as vocab_lib
from tests.data import meds_factory as mf


def _config(**overrides):
  return mf.build_config(**{"min_code_count": 1, **overrides})


@pytest.mark.parametrize("code,system,key", [
    ("ICD10CM//E11.9", cs.ICD10CM, "E11.9"),
    ("ICD10CM//E119", cs.ICD10CM, "E11.9"),
    ("ICD10//E119", cs.ICD10CM, "E11.9"),
    ("ICD//10//E119", cs.ICD10CM, "E11.9"),
    ("DIAGNOSIS//ICD//10//E1165", cs.ICD10CM, "E11.65"),
    ("ICD10CM//E11.65XZ", cs.ICD10CM, "E11.65"),      # invalid extension: nearest valid prefix
    ("ICD9CM//250.00", cs.ICD10CM, "E11.9"),          # via the GEMs
    ("DIAGNOSIS//ICD//9//25000", cs.ICD10CM, "E11.9"),
    ("CPT//99213", cs.CPT, "CPT//99213"),
    ("CPT4//99213", cs.CPT, "CPT//99213"),
    ("HCPCS//J1745", cs.HCPCS, "HCPCS//J1745"),
    ("PROCEDURE//ICD//10//0SRC0J9", cs.ICD10PCS, "ICD10PCS//0SRC0J9"),
    ("ICD10PCS//0SRC0J9", cs.ICD10PCS, "ICD10PCS//0SRC0J9"),
    ("NDC//00002143380", cs.NDC, "NDC//00002143380"),
    ("MEDICATION//NDC//0002-1433-80", cs.NDC, "NDC//00002143380"),
    ("LAB//GLUCOSE", cs.LAB, "LAB//GLUCOSE"),
    ("POS//11", cs.POS, "POS//11"),
    ("SOMETHING//ELSE", cs.OTHER, "OTHER//SOMETHING//ELSE"),
])
def test_code_spellings(code, system, key):
  analyzer = tok_lib.CodeAnalyzer(tok_lib.tokenizer_config(build_config.get_config()))
  info = analyzer.analyze(code)
  assert (info.system, info.key) == (system, key)


def test_a_new_code_system_is_one_spec(monkeypatch):
  # SNOMED as a user would add it: its SYSTEMS entry (rule, kind, role, key) and its vocabulary
  # section; the tokenizer is not edited.
  snomed = cs.CodeSystem(cs.TokenKind.DIAGNOSIS, cs.Role.DX, (r"^SNOMED(?:CT)?//(.+)$",),
                         key=str.strip)
  monkeypatch.setitem(cs.SYSTEMS, "SNOMED", snomed)
  monkeypatch.setattr(cs, "SYSTEM_KINDS", {**cs.SYSTEM_KINDS, "SNOMED": snomed.kind})
  monkeypatch.setattr(cs, "CODED_SYSTEMS", cs.CODED_SYSTEMS + ("SNOMED",))
  cs.check_systems()
  cfg = build_config.get_config()
  cfg.code_system_rules = cs.default_rules() + [(r"^SNOMED(?:CT)?//(.+)$", "SNOMED")]
  tok_config = tok_lib.tokenizer_config(cfg)
  info = tok_lib.CodeAnalyzer(tok_config).analyze("SNOMEDCT//44054006")
  assert (info.system, info.role, info.key) == ("SNOMED", cs.Role.DX, "SNOMED//44054006")
  vocab = tok_lib.build_vocabulary(tok_config, {"SNOMEDCT//44054006": 9}, [10.0, 100.0], ())
  token = vocab.id_of("SNOMED//44054006")
  assert vocab.kinds[token] == int(cs.TokenKind.DIAGNOSIS)
  assert "SNOMED//[UNK]" in vocab
  # A system without a key and without a tokenizer branch is refused at once.
  monkeypatch.setitem(cs.SYSTEMS, "SNOMED", dataclasses.replace(snomed, key=None))
  with pytest.raises(ValueError, match="SNOMED"):
    cs.check_systems()


def test_icd9_kept_when_not_mapped_and_drug_groupings():
  cfg = build_config.get_config()
  cfg.map_icd9_to_icd10 = False
  cfg.drug_grouping = "hhs_class"
  analyzer = tok_lib.CodeAnalyzer(tok_lib.tokenizer_config(cfg))
  info = analyzer.analyze("ICD9CM//250.00")
  assert (info.system, info.key, info.icd10) == (cs.ICD9CM, "ICD9CM//25000", "E11.9")
  assert analyzer.analyze("NDC//00002143380").key == "NDC//RXC07"       # HHS anti-diabetic class
  assert analyzer.analyze("NDC//99999999999").key == "NDC//999999999"   # unmapped: ndc9
  cfg.drug_grouping = "ndc9"
  assert tok_lib.CodeAnalyzer(tok_lib.tokenizer_config(cfg)).analyze(
      "NDC//00002143380").key == "NDC//000021433"


def test_backoff_to_nearest_frequent_ancestor():
  cfg = tok_lib.tokenizer_config(_config(min_code_count=5))
  counts = {"ICD10CM//E11.9": 10, "ICD10CM//E11.65": 1, "ICD10CM//E11.621": 1,
            "ICD10CM//J45.909": 1, "ICD10CM//J44.9": 2, "ICD10CM//J43.9": 3,
            "ICD10CM//S72.001A": 1, "CPT//99213": 5, "CPT//99214": 4}
  vocab = tok_lib.build_vocabulary(cfg, counts, [], [])
  tok = tok_lib.Tokenizer(vocab)
  names = lambda code: [vocab.tokens[i] for i in tok.code_token_ids(code)]
  assert names("ICD10CM//E11.9") == ["ICD10CM//E11", "ICD10CM//E11.9"]
  assert names("ICD10CM//E11.65") == ["ICD10CM//E11"]        # E11.6 has 2 < 5: category E11
  assert names("ICD10CM//J45.909") == ["ICD10CM//J40-J4A"]   # J45 has 1: the block (6)
  assert names("ICD10CM//S72.001A") == ["ICD10CM//[UNK]"]    # even its chapter is rare
  assert names("CPT//99214") == ["CPT//[UNK]"] and names("CPT//99213") == ["CPT//99213"]
  assert names("ICD10CM//E11.0") == ["ICD10CM//E11"]         # unseen in train: nearest node
  assert names("ICD10CM//NOTACODE") == ["ICD10CM//[UNK]"]
  no_cat = tok_lib.Tokenizer(tok_lib.build_vocabulary(
      dict(cfg, icd10_category_tokens=False), counts, [], []))
  assert [no_cat.vocab.tokens[i] for i in no_cat.code_token_ids("ICD10CM//E11.9")] == [
      "ICD10CM//E11.9"]


def _foreign_rows():
  """Another ETL: DIAGNOSIS//ICD//10// without dots, ICD-9, labs, no claim_id, year 2150."""
  rows = []
  for p in range(8):
    sid = 50 + p
    birth = dt.datetime(2090 + p, 3, 1)
    rows += [{"subject_id": sid, "time": None, "code": "SEX//FEMALE" if p % 2 else "SEX//MALE"},
             {"subject_id": sid, "time": None, "code": "RACE//WHITE"},
             {"subject_id": sid, "time": birth, "code": "MEDS_BIRTH", "site": "A"}]
    for m in range(0, 37, 2):  # through Dec 2150: the target year is observed
      t = dt.datetime(2148, 1, 5, 10) + dt.timedelta(days=30 * m + p)
      dx = ["DIAGNOSIS//ICD//10//E1165", "ICD9CM//250.00", "ICD10//I10",
            "DIAGNOSIS//ICD//9//4280"][(m // 2) % 4]
      rows += [{"subject_id": sid, "time": t, "code": dx, "site": "B"},
               {"subject_id": sid, "time": t, "code": "CPT4//99213"},
               {"subject_id": sid, "time": t, "code": "LAB//HBA1C", "numeric_value": 7.1},
               {"subject_id": sid, "time": t, "code": "COST//ALLOWED", "numeric_value": 100.0 + m}]
  return rows


def test_foreign_etl_loads(tmp_path):
  schema = mf.MEDS_SCHEMA.append(pa.field("text_value", pa.string()))
  meds = mf.write_meds(str(tmp_path / "meds"), _foreign_rows(), num_files=2, extra=("site",),
                       schema=schema)
  out = str(tmp_path / "out")
  report = build.build_dataset(meds, out, _config(hash_split_fractions=(1.0, 0.0, 0.0)))
  assert report["index_date"] == "2150-01-01"
  assert report["dropped"]["static_row_unused"] == 8       # RACE//WHITE
  assert report["input_rows"] == report["used_rows"] + sum(report["dropped"].values())
  assert report["rows_by_system"]["ICD10CM"] == 8 * 19
  vocab = vocab_lib.Vocabulary.load(os.path.join(out, "vocab.json"))
  for token in ("ICD10CM//E11.65", "ICD10CM//E11.9", "ICD10CM//I10", "ICD10CM//I50.9",
                "CPT//99213", "LAB//HBA1C", "GENDER//F", "GENDER//M"):
    assert token in vocab, token
  assert "ICD9CM//250.00" in vocab.entries[vocab.id_of("ICD10CM//E11.9")]["sources"]
  tasks = list(records.read_records(out, records.TASK, "train"))
  assert len(tasks) == 8 and report["task_examples"]["train"] == 8
  hf = conditions.CONDITION_NAMES.index("heart_failure")
  for rec in tasks:
    assert rec["index_day"] == meds_io.date_to_day("2150-01-01")
    assert rec["cond_prior"][hf] == 1 and rec["sex"] in (1, 2) and rec["lob"] == 0
    assert "E119" in rec["dx_prior"] or "E1165" in rec["dx_prior"]
    assert rec["cost_next"] > 0
  line = "\n".join(vocab.decode(next(records.read_records(out, records.TIMELINE, "train"))
                                ["tokens"]))
  assert "LAB HBA1C" in line and "Heart failure" in line and "2150" not in line


def test_every_drop_reason_is_counted(tmp_path):
  t = lambda d: dt.datetime(2020, 1, 1) + dt.timedelta(days=d)
  rows = []
  for sid in (1, 2):
    rows += [{"subject_id": sid, "time": None, "code": "GENDER//F"},
             {"subject_id": sid, "time": t(-20000), "code": "MEDS_BIRTH"},
             {"subject_id": sid, "time": t(0), "code": "ENROLLMENT//START//COMMERCIAL"}]
    for d in range(0, 700, 50):
      rows += [{"subject_id": sid, "time": t(d), "code": "CLAIM//PROFESSIONAL", "claim_id": f"{d}"},
               {"subject_id": sid, "time": t(d), "code": "ICD10CM//I10", "claim_id": f"{d}"},
               {"subject_id": sid, "time": t(d), "code": "COST//ALLOWED", "numeric_value": 50.0,
                "claim_id": f"{d}"}]
  rows.append({"subject_id": 2, "time": t(680), "code": "MEDS_DEATH"})
  bad = {
      "duplicate_row": [{"subject_id": 1, "time": t(50), "code": "ICD10CM//I10",
                         "claim_id": "50"}],
      "null_time": [{"subject_id": 1, "time": None, "code": "ICD10CM//E11.9"}],
      "static_row_unused": [{"subject_id": 1, "time": None, "code": "ETHNICITY//X"}],
      "other_cost_measure": [{"subject_id": 1, "time": t(50), "code": "COST//PAID",
                              "numeric_value": 3.0, "claim_id": "50"}],
      "cost_without_value": [{"subject_id": 1, "time": t(100), "code": "COST//ALLOWED",
                              "claim_id": "100b"}],
      "negative_cost": [{"subject_id": 1, "time": t(150), "code": "COST//ALLOWED",
                         "numeric_value": -5.0, "claim_id": "150b"}],
      "event_before_birth": [{"subject_id": 1, "time": t(-20001), "code": "ICD10CM//I10"}],
      "event_after_death": [{"subject_id": 2, "time": t(690), "code": "CPT//99213"},
                            {"subject_id": 2, "time": t(690), "code": "CPT//99214"}],
      "subject_without_events": [{"subject_id": 3, "time": None, "code": "GENDER//M"},
                                 {"subject_id": 3, "time": t(-9000), "code": "MEDS_BIRTH"}],
      "subject_in_unknown_split": [{"subject_id": 4, "time": t(5), "code": "ICD10CM//I10"},
                                   {"subject_id": 4, "time": t(6), "code": "CPT//99213"}],
  }
  expected = {reason: len(r) for reason, r in bad.items()}
  rows += [r for rs in bad.values() for r in rs]
  splits = {1: "train", 2: "train", 3: "train", 4: "calibration"}
  meds = mf.write_meds(str(tmp_path / "meds"), rows, splits=splits)
  # A second file whose time column is an ISO string with one unparseable value.
  pq.write_table(pa.table({
      "subject_id": pa.array([5, 5, 5], pa.int64()),
      "time": pa.array(["2019-01-01T00:00:00", "2020-02-03 10:00:00", "not a date"]),
      "code": pa.array(["MEDS_BIRTH", "CPT//99213", "CPT//99214"]),
      "numeric_value": pa.array([None, None, None], pa.float32())}),
      os.path.join(meds, "data", "strings.parquet"))
  expected["unparseable_time"] = 1
  report = build.build_dataset(meds, str(tmp_path / "out"), _config())
  assert {k: v for k, v in report["dropped"].items() if v} == expected
  assert set(build.DROP_REASONS) == set(report["dropped"])
  assert report["input_rows"] == len(rows) + 3
  assert report["input_rows"] == report["used_rows"] + sum(report["dropped"].values())
  assert report["index_date"] == "2021-01-01"
  # Subject 2 died in the target year (kept: keep_decedents); subject 5 has no enrollment rows and
  # no events in 2021 but is observed to the end of the data's last year.
  assert report["task_examples"]["train"] + sum(report["task_exclusions"]["train"].values()) == \
      report["patients"]["train"] == 3


def _write(path, table):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pq.write_table(table, path)


def _good_table(subject_id: int = 1):
  return pa.table({"subject_id": pa.array([subject_id] * 2, pa.int64()),
                   "time": pa.array([dt.datetime(2020, 1, 1), dt.datetime(2020, 2, 1)],
                                    pa.timestamp("us")),
                   "code": pa.array(["MEDS_BIRTH", "CPT//99213"]),
                   "numeric_value": pa.array([None, None], pa.float32())})


_WORKERS = pytest.mark.parametrize("num_workers", [1, 2])


@pytest.mark.time_limit(120)
@_WORKERS
@pytest.mark.parametrize("breakage,column", [
    ("missing", "code"), ("missing", "numeric_value"), ("type", "subject_id"),
    ("type", "time"), ("type", "code"), ("type", "numeric_value"), ("unreadable", None)])
def test_malformed_input_names_file_and_column(tmp_path, breakage, column, num_workers):
  # A good second file: with two workers, each file goes to its own worker process.
  _write(str(tmp_path / "meds" / "data" / "part-1.parquet"), _good_table(subject_id=2))
  path = str(tmp_path / "meds" / "data" / "part-0.parquet")
  table = _good_table()
  if breakage == "missing":
    table = table.drop_columns([column])
  elif breakage == "type":
    bad = {"subject_id": pa.array(["a", "b"]), "time": pa.array([1, 2], pa.int64()),
           "code": pa.array([1, 2], pa.int64()), "numeric_value": pa.array(["x", "y"])}[column]
    table = table.set_column(table.column_names.index(column), column, bad)
  _write(path, table)
  if breakage == "unreadable":
    with open(path, "wb") as f:
      f.write(b"this is not parquet")
  with pytest.raises(meds_io.MEDSFormatError) as e:
    build.build_dataset(str(tmp_path / "meds"), str(tmp_path / "out"),
                        _config(num_workers=num_workers))
  assert path in str(e.value)
  if column:
    assert f"column {column!r}" in str(e.value)


@pytest.mark.time_limit(120)
@_WORKERS
def test_subject_in_two_files_is_an_error(tmp_path, num_workers):
  _write(str(tmp_path / "meds" / "data" / "a.parquet"), _good_table())
  _write(str(tmp_path / "meds" / "data" / "b.parquet"), _good_table())
  with pytest.raises(meds_io.MEDSFormatError, match="more than one data file"):
    build.build_dataset(str(tmp_path / "meds"), str(tmp_path / "out"),
                        _config(num_workers=num_workers))


@pytest.mark.time_limit(120)
@_WORKERS
def test_no_data_is_an_error(tmp_path, num_workers):
  with pytest.raises(meds_io.MEDSFormatError, match="no data/ directory"):
    build.build_dataset(str(tmp_path), str(tmp_path / "out"), _config(num_workers=num_workers))
