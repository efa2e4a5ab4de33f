"""The scaling curve: points train on N patients, the table, CSV and plot come from their runs."""

import csv
import json
import os
import shutil

import pytest

from experiments import scaling
from experiments.configs import scaling as scaling_cfg
from lmm_jax.eval import predictions as pred_lib


def test_scaling_grid_writes_table_csv_and_plot(tiny_data_dir, tmp_path):
  sc = scaling_cfg.get_config("tiny")
  sc.data_dir = tiny_data_dir
  wd = str(tmp_path / "scaling")
  out = scaling.run_scaling(sc, wd)
  rows = out["rows"]
  assert [(r["size"], r["train_patients"]) for r in rows] == [("xxs", 20), ("xxs", 40)]
  # Twice the patients, twice the members they carry (the task share of the train split).
  assert rows[1]["train_members"] >= rows[0]["train_members"] >= 1
  for r in rows:
    assert r["params"] > 0 and 4 <= r["pretrain_steps"] <= 6 and r["tuning_loss"] > 0
    assert 0 <= r["macro_auroc"] <= 1 and r["nmae"] > 0
  with open(out["files"]["csv"]) as f:
    table = list(csv.DictReader(f))
  assert [int(t["train_patients"]) for t in table] == [20, 40]
  assert "held-out macro AUROC" in open(out["files"]["md"]).read()
  assert os.path.getsize(out["files"]["png"]) > 0
  # The runs trained on the subset: the pretraining config records train_examples = N.
  cfg = json.load(open(os.path.join(wd, "points", "xxs-n20", "pretrain", "config.json")))
  assert cfg["train_examples"] == 20
  # A restart reads the finished points back instead of training again.
  again = scaling.run_scaling(sc, wd)
  assert again["rows"] == rows


def test_scaling_refuses_unknown_sizes_and_presets(tiny_data_dir):
  with pytest.raises(ValueError, match="unknown scaling preset"):
    scaling_cfg.get_config("huge")
  sc = scaling_cfg.get_config("tiny")
  sc.data_dir, sc.sizes = tiny_data_dir, ("giant",)
  with pytest.raises(ValueError, match="model size 'giant'"):
    scaling.run_scaling(sc, "/tmp/unused-scaling-dir")


def test_scaling_prints_reference_models_on_the_same_members(tiny_data_dir, tmp_path):
  """references_dir: a baselines run's held-out figures beside the points; other members refused."""
  sc = scaling_cfg.get_config("tiny")
  sc.data_dir, sc.train_patients = tiny_data_dir, (20,)
  wd = str(tmp_path / "scaling")
  point = os.path.join(wd, "points", "xxs-n20")
  rows = scaling.run_scaling(sc, wd)["rows"]
  # A "baselines run" holding the point's own predictions under other names: same figures.
  refs = tmp_path / "refs"
  for task in pred_lib.TASKS:
    src = pred_lib.predictions_path(os.path.join(point, task), task, "lmm_finetuned")
    dst = pred_lib.predictions_path(str(refs), task, f"ref_{task}")
    os.makedirs(os.path.dirname(dst))
    shutil.copy(src, dst)
  sc.references_dir = str(refs)
  sc.reference_models.cost, sc.reference_models.chronic = ("ref_cost",), ("ref_chronic",)
  out = scaling.run_scaling(sc, wd)
  by_model = {r["model"]: r for r in out["references"]}
  assert by_model["ref_cost"]["nmae"] == pytest.approx(rows[0]["nmae"])
  assert by_model["ref_chronic"]["macro_auroc"] == pytest.approx(rows[0]["macro_auroc"])
  md = open(out["files"]["md"]).read()
  assert "References on the same held-out members" in md and "| ref_cost |" in md
  # A reference on fewer members is not comparable: refused, naming the file.
  cost = pred_lib.read_cost_predictions(
      pred_lib.predictions_path(str(refs), "cost", "ref_cost"))
  pred_lib.write_cost_predictions(str(refs), "ref_cost", cost.subject_id[:-1],
                                  cost.y_true[:-1], cost.y_pred[:-1], meta=cost.meta)
  with pytest.raises(ValueError, match=r"ref_cost\.parquet: predicts .* not the"):
    scaling.run_scaling(sc, wd)
  # A named reference that is not there.
  sc.reference_models.cost, sc.reference_models.chronic = ("lightgbm_nowhere",), ()
  with pytest.raises(FileNotFoundError, match="lightgbm_nowhere"):
    scaling.run_scaling(sc, wd)
