"""Numeric values -> per-code quantile-bin tokens fit on train; codes.parquet parents and
descriptions -> the vocabulary; the per-family coverage of report.json."""

import datetime as dt
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lmm_jax.data import build
from lmm_jax.data import code_metadata
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
