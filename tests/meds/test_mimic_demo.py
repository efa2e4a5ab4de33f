"""The MIMIC-IV demo (real MEDS data, 100 patients, ODbL; ../shared/data/mimic-iv-demo-meds):
an ACES task (MEDS-DEV's 30-day readmission) built into per-subject prediction times, tiny
pretrain and binary fine-tune, held-out predictions that meds-evaluation accepts, and the
degenerate tasks refused with a message saying why."""

import json
import os

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_prep.configs import build_dataset as build_config
from experiments.configs import binary as binary_config
from experiments.configs import cost as cost_config
from experiments.configs import pretrain as pretrain_config
from lmm_jax import tasks
from lmm_jax.data import build
from lmm_jax.data import meds_tasks
from lmm_jax.data import records
from lmm_jax.data.vocab import Vocabulary
from lmm_jax.insights import report as insights_report
from lmm_jax.train import predict
from lmm_jax.train import trainer as trainer_lib
from meds_evaluation.evaluate import evaluate_binary_classification
from meds_evaluation.schema import PredictionSchema

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIMIC = os.path.join(REPO, "..", "shared", "data", "mimic-iv-demo-meds")
ACES = os.path.join(REPO, "experiments", "configs", "aces")
READMISSION = os.path.join(ACES, "readmission_30d.yaml")


def _config(**overrides):
  c = build_config.get_config()
  c.update_from_flattened_dict({"num_workers": 1, "progress": False, "min_code_count": 1,
                                **overrides})
  return c


@pytest.fixture(scope="module")
def mimic_task_dir(tmp_path_factory) -> str:
  assert os.path.isdir(MIMIC), f"the MIMIC-IV demo is missing at {MIMIC} (CI has it)"
  out = str(tmp_path_factory.mktemp("mimic") / "records")
  build.build_dataset(MIMIC, out, _config(task="aces", task_aces_config=READMISSION,
                                          split_source="hash"))
  return out


def _report(data_dir):
  with open(os.path.join(data_dir, records.REPORT_FILE)) as f:
    return json.load(f)


def test_aces_task_gives_prediction_times_with_positives_in_every_split(mimic_task_dir):
  report = _report(mimic_task_dir)
  assert report["task"] == "aces" and report["task_label_rows_without_subject"] == 0
  for split in ("train", "tuning", "held_out"):
    assert report["task_examples"][split] > report["task_positives"][split] > 0
  assert sum(report["task_examples"].values()) == report["task_label_rows"]
  labels = meds_tasks.read_labels(os.path.join(mimic_task_dir, meds_tasks.LABELS_DIR))
  # A subject has one record per discharge; each history ends at or before its prediction time.
  recs = list(records.read_records(mimic_task_dir, records.TASK, "train"))
  sids = [int(r["subject_id"]) for r in recs]
  assert len(sids) > len(set(sids))
  for r in recs:
    assert r["boolean_value"] in (0, 1)
    assert np.all(r["days"] <= int(r["prediction_time"]) // meds_tasks.US_PER_DAY)
    assert r["index_day"] == int(r["prediction_time"]) // meds_tasks.US_PER_DAY
    assert r["tokens"].size > r["prefix_len"]
  assert set(sids) <= set(labels.subject_id.tolist())
  # Two records of one subject: the later one's history extends the earlier one's.
  by = {}
  for r in recs:
    by.setdefault(int(r["subject_id"]), []).append(r)
  many = next(v for v in by.values() if len(v) > 1)
  a, b = sorted(many, key=lambda r: int(r["prediction_time"]))[:2]
  assert b["tokens"].size > a["tokens"].size


def test_metadata_splits_leave_tuning_without_positives_and_the_build_says_so(tmp_path):
  with pytest.raises(meds_tasks.TaskDefinitionError,
                     match=r"no positive labels in split tuning \(0 positives of \d+ examples\)"):
    build.build_dataset(MIMIC, str(tmp_path / "out"),
                        _config(task="aces", task_aces_config=READMISSION))
  assert not os.path.exists(tmp_path / "out")


def test_labels_before_the_data_are_refused(tmp_path, mimic_task_dir):
  table = pq.read_table(os.path.join(mimic_task_dir, meds_tasks.LABELS_DIR))
  early = table.set_column(1, "prediction_time", pl.from_arrow(table).with_columns(
      pl.col("prediction_time").dt.offset_by("-300y"))["prediction_time"].to_arrow())
  os.makedirs(tmp_path / "labels")
  pq.write_table(early, str(tmp_path / "labels" / "0.parquet"))
  with pytest.raises(meds_tasks.TaskDefinitionError, match="no event before their prediction"):
    build.build_dataset(MIMIC, str(tmp_path / "out"), _config(
        task="labels", task_labels_dir=str(tmp_path / "labels"), split_source="hash"))


def test_tiny_pretrain_binary_finetune_and_meds_evaluation(mimic_task_dir, tmp_path):
  common = {"data_dir": mimic_task_dir, "num_train_steps": 2, "checkpoint_every_steps": 2,
            "progress": False}
  pre = pretrain_config.get_config("tiny")
  pre.update_from_flattened_dict({**common, "eval_batches": 1})
  pre_dir = str(tmp_path / "pretrain")
  trainer_lib.train_and_evaluate(pre, pre_dir, tasks.make_task(pre))
  ft = binary_config.get_config("tiny")
  ft.update_from_flattened_dict({**common, "init_from": pre_dir, "log_every_steps": 1})
  final = predict.train_and_predict(ft, str(tmp_path / "binary"))
  assert 0.0 <= final["eval_auroc"] <= 1.0 and final["eval_n"] > 0
  preds = pq.read_table(final["predictions"])
  PredictionSchema.validate(preds)
  held_out = list(records.read_records(mimic_task_dir, records.TASK, "held_out"))
  assert preds.num_rows == len(held_out)
  assert preds.column("boolean_value").to_pylist() == [bool(r["boolean_value"])
                                                       for r in held_out]
  result = evaluate_binary_classification(pl.from_arrow(preds), samples_per_subject=1,
                                          resampling_seed=0)
  assert result
  # The insights report renders on real data (issue 17): the binary head's explanations and risk
  # factors; condition relationships from the data alone (no chronic model, no truth).
  out = str(tmp_path / "insights")
  path = insights_report.write_insights_report(
      out, str(tmp_path / "binary"), mimic_task_dir, num_members=1, max_members=12, ig_steps=4,
      num_bootstrap=20, risk_members=12, risk_tokens_per_kind=1, progress=False)
  text = open(path, encoding="utf-8").read()
  for section in ("## 1.", "## 2.", "## 3.", "## 5.", "Risk factors of the task's binary label"):
    assert section in text, section
  assert "true link" not in text
  assert os.path.getsize(os.path.join(out, "insights_risk_factors_binary.png")) > 1000


def test_claims_cost_task_on_mimic_fails_saying_there_is_no_cost(tmp_path):
  out = str(tmp_path / "claims")
  build.build_dataset(MIMIC, out, _config(required_splits=("train",),
                                          min_share_with_target_year_data=0.0))
  config = cost_config.get_config("tiny")
  config.data_dir = out
  with pytest.raises(meds_tasks.TaskDefinitionError,
                     match=r"^no cost events \(`COST//ALLOWED`\) in .*mimic-iv-demo-meds"):
    tasks.make_task(config)


def test_lab_values_and_medication_parents_reach_the_vocabulary(mimic_task_dir):
  report = _report(mimic_task_dir)
  vocab = Vocabulary.load(os.path.join(mimic_task_dir, records.VOCAB_FILE))
  lab_bins = [t for t in vocab.tokens if t.startswith("LAB//LOINC//") and "//_Q_" in t]
  ndc = [t for t in vocab.tokens if t.startswith("NDC//") and not t.endswith("[UNK]")]
  assert len(lab_bins) > 500 and len(ndc) > 300
  assert report["codes_with_value_bins"] > 100 and report["codes_mapped_to_parents"] > 1000
  cov = report["code_coverage"]
  # Most medication and lab rows reach a parent (NDC, LOINC); few fall to [UNK].
  for family in ("MEDICATION", "LAB"):
    rows = sum(cov[family].values())
    assert cov[family]["parent"] > 0.5 * rows and cov[family]["unk"] < 0.1 * rows
  with_desc = [e for e in vocab.entries if e["token"].startswith("LAB//LOINC//")
               and "//_Q_" not in e["token"] and e["description"]]
  assert with_desc


def test_text_values_become_categories_or_numbers(mimic_task_dir):
  report = _report(mimic_task_dir)
  vocab = Vocabulary.load(os.path.join(mimic_task_dir, records.VOCAB_FILE))
  text = report["text_values"]
  assert text["rows"] == text["category"] + text["bare_code"]
  # Blood-gas specimen types (LOINC 66746-9: arterial / venous) are categories; most text rows
  # get one; height, weight and BMI, kept as text by the ETL, are read as numbers (value bins).
  assert "LAB//LOINC//66746-9//_T_ART." in vocab.tokens
  assert text["category"] > 0.5 * text["rows"] and report["codes_with_text_categories"] > 20
  assert text["read_as_number"] > 1500
  assert "OTHER//Height (Inches)//_Q_1" in vocab.tokens
  assert not any(t.startswith("OTHER//Height (Inches)//_T_") for t in vocab.tokens)


def test_float_value_labels_fine_tune_the_cost_head(mimic_task_dir, tmp_path):
  # The readmission task's prediction times with a float_value label (a plumbing check: the
  # value is a function of the subject id, nothing to learn).
  labels = pq.read_table(os.path.join(mimic_task_dir, meds_tasks.LABELS_DIR))
  sid = labels.column("subject_id").to_numpy()
  table = pa.table({"subject_id": labels.column("subject_id"),
                    "prediction_time": labels.column("prediction_time"),
                    "float_value": pa.array(1.0 + sid % 7, pa.float64())})
  os.makedirs(tmp_path / "labels")
  pq.write_table(table, str(tmp_path / "labels" / "0.parquet"))
  out = str(tmp_path / "records")
  report = build.build_dataset(MIMIC, out, _config(
      task="labels", task_labels_dir=str(tmp_path / "labels"), split_source="hash"))
  assert report["task_label_value"] == "float_value"
  config = cost_config.get_config("tiny")
  config.update_from_flattened_dict({"data_dir": out, "num_train_steps": 2,
                                     "checkpoint_every_steps": 2, "progress": False})
  wd = str(tmp_path / "cost")
  final = predict.train_and_predict(config, wd)
  assert np.isfinite(final["eval_nmae"]) and final["eval_n"] > 0
  meds = pq.read_table(os.path.join(wd, "predictions", "meds_cost", "lmm_finetuned.parquet"))
  held_out = list(records.read_records(out, records.TASK, "held_out"))
  assert meds.column("float_value").to_pylist() == [float(r["float_value"]) for r in held_out]
  assert meds.column("float_value").to_pylist() == [
      1.0 + int(r["subject_id"]) % 7 for r in held_out]
  assert "capped" not in "".join(meds.column_names)
  # Integer labels are refused, saying what is supported.
  pq.write_table(table.append_column("integer_value", pa.array(sid % 2, pa.int64())),
                 str(tmp_path / "labels" / "0.parquet"))
  with pytest.raises(meds_tasks.TaskDefinitionError, match="'integer_value', which no head"):
    build.build_dataset(MIMIC, str(tmp_path / "int"), _config(
        task="labels", task_labels_dir=str(tmp_path / "labels"), split_source="hash"))
