"""The scaling curve: points train on N patients, the table, CSV and plot come from their runs."""

import csv
import json
import os

import pytest

from experiments import scaling
from experiments.configs import scaling as scaling_cfg


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
