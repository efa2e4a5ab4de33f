"""Numeric values -> per-code quantile-bin tokens fit on train; codes.parquet parents and
descriptions -> the vocabulary; the per-family coverage of report.json."""

import datetime as dt
import os

import numpy as np
import pytest
import pyarrow as pa
import pyarrow.parquet as pq

from lmm_jax.data import build
from lmm_jax.data import code_metadata
from lmm_jax.data import meds_io
from lmm_jax.data import records
from lmm_jax.data import tokenizer as tok_lib
from lmm_jax.data.vocab import Vocabulary
from tests.data import meds_factory as mf

T0 = dt.datetime(2150, 3, 1, 8, 0)
SPLITS = {s: "train" if s <= 40 else ("tuning" if s <= 45 else "held_out") for s in range(1, 51)}


def _world(tmp_path, codes_table=None, held_out_glucose=None):
  rows = []
  for sid in SPLITS:
    rows += [{"subject_id": sid, "time": None, "code": "GENDER//M"},
             {"subject_id": sid, "time": dt.datetime(2100, 1, 1), "code": "MEDS_BIRTH"}]
    for j in range(5):  # glucose values 1..200 on train; held-out ones may be absurdly high
      v = float(sid * 5 + j) if SPLITS[sid] == "train" or held_out_glucose is None \
          else held_out_glucose
      rows.append({"subject_id": sid, "time": T0 + dt.timedelta(days=j), "code": "LAB//GLU",
                   "numeric_value": v})
    rows += [{"subject_id": sid, "time": T0, "code": "LAB//CONST", "numeric_value": 1.0},
             {"subject_id": sid, "time": T0, "code": "LAB//NOVALUE"},
             {"subject_id": sid, "time": T0, "code": f"MEDICATION//Aspirin//{sid % 3}"},
             {"subject_id": sid, "time": T0, "code": f"MEDICATION//RareDrug{sid}"}]
  meds = mf.write_meds(str(tmp_path / "meds"), rows, splits=SPLITS)
  if codes_table is not None:
    pq.write_table(codes_table, os.path.join(meds, "metadata", "codes.parquet"))
  return meds


CODES = pa.table({
    "code": ["MEDICATION//Aspirin//0", "MEDICATION//Aspirin//1", "MEDICATION//Aspirin//2",
             "LAB//GLU"] + [f"MEDICATION//RareDrug{s}" for s in SPLITS],
    "description": [None, None, None, "Glucose [Mass/volume] in Blood"] + [None] * len(SPLITS),
    "parent_codes": [["NDC/00904201559"], ["NDC/00904201559"], ["NDC/00904201559"],
                     ["LOINC/2345-7"]] + [["RxNorm/1191"]] * len(SPLITS)})


def _build(tmp_path, meds, **kw):
  out = str(tmp_path / "out")
  report = build.build_dataset(meds, out, mf.build_config(
      required_splits=("train",), min_share_with_target_year_data=0.0, index_date="2150-03-03",
      min_history_days=0, require_full_target_year=False, **kw))
  return report, out, Vocabulary.load(os.path.join(out, records.VOCAB_FILE))


def _timeline_tokens(out, vocab, split="train"):
  return [[vocab.tokens[i] for i in r["tokens"]]
          for r in records.read_records(out, records.TIMELINE, split)]


def test_values_become_per_code_decile_tokens_fit_on_train(tmp_path):
  report, out, vocab = _build(tmp_path, _world(tmp_path))
  bins = [t for t in vocab.tokens if t.startswith("LAB//GLU//_Q_")]
  assert sorted(bins, key=lambda t: int(t.rsplit("_", 1)[1])) == [
      f"LAB//GLU//_Q_{k}" for k in range(1, 11)]
  assert report["codes_with_value_bins"] == 1  # CONST has one distinct value; NOVALUE none
  assert "LAB//CONST" in vocab.tokens and "LAB//NOVALUE" in vocab.tokens
  seqs = _timeline_tokens(out, vocab)
  # Subject 1 has the 5 smallest glucose values (5..9): the first decile; subject 40 the last.
  first = next(s for s in seqs if s.count("LAB//GLU//_Q_1") == 5)
  assert "LAB//GLU" not in first and "LAB//NOVALUE" in first
  assert any(s.count("LAB//GLU//_Q_10") == 5 for s in seqs)
  desc = vocab.entries[vocab.id_of("LAB//GLU//_Q_10")]["description"]
  assert desc.startswith("value bin 10/10 [") and desc.endswith(", inf)")


def test_edges_come_from_train_only_and_bins_can_be_turned_off(tmp_path):
  _, out, vocab = _build(tmp_path, _world(tmp_path, held_out_glucose=1e6))
  _, out2, vocab2 = _build(tmp_path / "b", _world(tmp_path / "b"))
  assert vocab.meta == vocab2.meta and vocab.tokens == vocab2.tokens
  held = _timeline_tokens(out, vocab, "held_out")
  assert held and all(s.count("LAB//GLU//_Q_10") == 5 for s in held)
  _, _, off = _build(tmp_path / "c", _world(tmp_path / "c"), num_value_bins=0)
  assert not any("_Q_" in t for t in off.tokens) and "LAB//GLU" in off.tokens


def test_codes_parquet_parents_group_drugs_and_labs_and_back_off_rare_codes(tmp_path):
  report, out, vocab = _build(tmp_path, _world(tmp_path, CODES))
  # Three raw aspirin strings -> one NDC token; glucose -> its LOINC (with its value bins and
  # the codes.parquet description); a drug seen once per patient backs off to its RxNorm parent.
  assert "NDC//00904201559" in vocab.tokens
  assert not any(t.startswith("OTHER//MEDICATION//Aspirin") for t in vocab.tokens)
  assert "LAB//LOINC//2345-7//_Q_1" in vocab.tokens and "LAB//GLU//_Q_1" not in vocab.tokens
  assert (vocab.entries[vocab.id_of("LAB//LOINC//2345-7")]["description"]
          == "Glucose [Mass/volume] in Blood")
  assert "OTHER//RXNORM//1191" in vocab.tokens
  assert report["codes_mapped_to_parents"] == 3 + 1 + len(SPLITS)
  cov = report["code_coverage"]
  assert cov["MEDICATION"] == {"specific": 0, "parent": 2 * len(SPLITS), "unk": 0}
  assert cov["LAB"]["parent"] == 5 * len(SPLITS) and cov["LAB"]["unk"] == 0
  # Without the metadata the rare drugs fall to [UNK].
  report2, _, _ = _build(tmp_path / "b", _world(tmp_path / "b", CODES), use_code_metadata=False)
  assert report2["code_coverage"]["MEDICATION"]["unk"] == len(SPLITS)
  assert report2["codes_mapped_to_parents"] == 0


def test_code_mapping_policies():
  meta = code_metadata.CodeMetadata({}, {"LAB//A": ("SNOMED/1", "LOINC/9-9"),
                                         "OTHER//B": ("RxNorm/5",), "OTHER//C": ("RxNorm/5",),
                                         "ICD10CM//E11.9": ("LOINC/1-1",)})
  analyzer = tok_lib.CodeAnalyzer(tok_lib.tokenizer_config(mf.build_config()))
  counts = {"LAB//A": 1, "OTHER//B": 100, "OTHER//C": 2, "ICD10CM//E11.9": 9}
  m = code_metadata.code_mapping(meta, counts, analyzer, 5, code_metadata.DEFAULT_PARENTS)
  # LOINC (always) beats SNOMED; B is frequent so keeps its own code; C backs off to RxNorm;
  # diagnoses have their own system and are never rewritten.
  assert m == {"LAB//A": "LAB//LOINC//9-9", "OTHER//C": "RXNORM//5"}
  assert np.isclose(sum(code_metadata.mapped_counts(counts, m).values()), sum(counts.values()))


def _text_world(tmp_path, text_column=True):
  """Urine ketones: NEG on most train rows, POS on a few, a free-text comment on each row, rows
  where the text comes with a numeric value (the value wins), a height kept as text only (read
  as a number) and a reading that is not a number."""
  rows = []
  for sid in SPLITS:
    rows += [{"subject_id": sid, "time": None, "code": "GENDER//M"},
             {"subject_id": sid, "time": dt.datetime(2100, 1, 1), "code": "MEDS_BIRTH"}]
    for j in range(3):
      t = T0 + dt.timedelta(days=j)
      rows += [{"subject_id": sid, "time": t, "code": "LAB//KET",
                "text_value": " NEG " if sid % 10 else "POS"},
               {"subject_id": sid, "time": t, "code": "LAB//NOTE",
                "text_value": f"comment {sid}-{j}"},
               {"subject_id": sid, "time": t, "code": "LAB//HGT", "numeric_value": float(sid),
                "text_value": str(sid)},
               {"subject_id": sid, "time": t, "code": "LAB//BLANK", "text_value": "  "},
               {"subject_id": sid, "time": t, "code": "LAB//HT", "text_value": f"{150 + sid}.5"},
               {"subject_id": sid, "time": t, "code": "LAB//BP", "text_value": f"{100 + sid}/80"}]
  extra = ("claim_id", "text_value") if text_column else ("claim_id",)
  return mf.write_meds(str(tmp_path / "meds"), rows, splits=SPLITS, extra=extra)


def test_low_cardinality_text_values_become_category_tokens(tmp_path):
  report, out, vocab = _build(tmp_path, _text_world(tmp_path), min_code_count=11)
  # 40 train subjects, 3 rows each: NEG on 36 subjects (108 rows), POS on 4 (12 rows).
  assert "LAB//KET//_T_NEG" in vocab.tokens and "LAB//KET//_T_POS" in vocab.tokens
  assert vocab.entries[vocab.id_of("LAB//KET//_T_NEG")]["description"] == "text value 'NEG'"
  assert not any(t.startswith("LAB//NOTE//_T_") or "//_T_" in t and "HGT" in t
                 for t in vocab.tokens)
  assert report["codes_with_text_categories"] == 1
  n = len(SPLITS)
  # KET rows get a category, NOTE and BP rows (every text seen at most 3 times) keep the bare
  # code; HGT has a numeric value and HT's text is a number (value bins), BLANK's text is
  # empty: none of these is a text row.
  assert report["text_values"] == {"read_as_number": 3 * n, "rows": 9 * n, "category": 3 * n,
                                   "bare_code": 6 * n}
  assert "LAB//HT//_Q_10" in vocab.tokens
  seqs = _timeline_tokens(out, vocab, "held_out")
  assert all(sum(t.startswith("LAB//HT//_Q_") for t in s) == 3 and "LAB//HT" not in s
             for s in seqs)
  assert all(s.count("LAB//NOTE") == 3 and s.count("LAB//BLANK") == 3 and s.count("LAB//BP") == 3
             for s in seqs)
  assert sum(s.count("LAB//KET//_T_NEG") + s.count("LAB//KET//_T_POS") for s in seqs) == \
      3 * len(seqs)
  # A cap of one category per code keeps the most frequent; POS rows then keep the bare code.
  report1, _, vocab1 = _build(tmp_path / "b", _text_world(tmp_path / "b"), min_code_count=11,
                              max_text_values_per_code=1)
  assert "LAB//KET//_T_NEG" in vocab1.tokens and "LAB//KET//_T_POS" not in vocab1.tokens
  assert report1["text_values"]["category"] == 3 * (n - n // 10)


def test_text_values_can_be_off_or_absent(tmp_path):
  report, _, vocab = _build(tmp_path, _text_world(tmp_path), min_code_count=11,
                            max_text_values_per_code=0)
  assert not any("//_T_" in t for t in vocab.tokens) and "LAB//KET" in vocab.tokens
  assert report["text_values"]["category"] == 0
  report2, _, vocab2 = _build(tmp_path / "b", _text_world(tmp_path / "b", text_column=False),
                              min_code_count=11)
  assert report2["text_values"] == {"read_as_number": 0, "rows": 0, "category": 0,
                                    "bare_code": 0}
  assert [t for t in vocab2.tokens if "LAB//HT" not in t] == [
      t for t in vocab.tokens if "LAB//HT" not in t]
  report3, _, vocab3 = _build(tmp_path / "c", _text_world(tmp_path / "c"), min_code_count=11,
                              numeric_text_values=False)
  assert report3["text_values"]["read_as_number"] == 0 and "LAB//HT" in vocab3.tokens
  assert not any(t.startswith("LAB//HT//_Q_") for t in vocab3.tokens)


def test_a_non_string_text_value_column_is_refused_naming_it(tmp_path):
  rows = [{"subject_id": 1, "time": T0, "code": "LAB//KET", "text_value": 3}]
  meds = mf.write_meds(str(tmp_path / "meds"), rows, schema=pa.schema(
      list(mf.MEDS_SCHEMA) + [pa.field("text_value", pa.int64())]))
  with pytest.raises(meds_io.MEDSFormatError, match=r"column 'text_value': must be a string"):
    _build(tmp_path, meds)
