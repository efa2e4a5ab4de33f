"""Tiny pretrain -> fine-tune (cost, chronic) -> held-out predictions on the shared tiny data."""

import json
import os

from flax import traverse_util
import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from experiments.configs import chronic as chronic_config
from experiments.configs import cost as cost_config
from lmm_jax import conditions
from lmm_jax import tasks
from lmm_jax.data import records
from lmm_jax.eval import predictions
from lmm_jax.train import checkpoint as ckpt_lib
from lmm_jax.train import predict
from lmm_jax.train import trainer as trainer_lib


def _config(module, data_dir: str, init_from: str, **overrides):
  config = module.get_config("tiny")
  config.update_from_flattened_dict({  # dotted keys; unknown ones fail (locked)
      "data_dir": data_dir, "init_from": init_from, "num_train_steps": 2,
      "checkpoint_every_steps": 2, "log_every_steps": 1, "progress": False, **overrides})
  return config


def _saved_params(workdir: str) -> dict:
  params, _ = ckpt_lib.load_params(workdir)
  return traverse_util.flatten_dict(params)


def _held_out_ids(data_dir: str) -> list[int]:
  return sorted(int(r["subject_id"]) for r in records.read_records(data_dir, records.TASK,
                                                                  "held_out"))


def test_init_from_restores_the_backbone_exactly_and_heads_fresh(tiny_data_dir, pretrained,
                                                                  tmp_path):
  config = _config(cost_config, tiny_data_dir, pretrained)
  task = tasks.make_task(config)
  tr = trainer_lib.Trainer(config, task)
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  state, _, source = tr.restore_or_init(ckpt)
  ckpt.close()
  assert "init_from" in source
  saved = _saved_params(pretrained)
  backbone = traverse_util.flatten_dict(jax.device_get(state["params"]["backbone"]))
  assert set(backbone) == set(saved)
  for k, v in saved.items():
    np.testing.assert_array_equal(backbone[k], v, err_msg="/".join(k))
  fresh = jax.device_get(tr.init_state(config.seed)["params"])
  for a, b in zip(jax.tree.leaves(fresh["head"]), jax.tree.leaves(state["params"]["head"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A different seed would give other heads: they really are freshly initialized.
  assert not np.array_equal(np.asarray(fresh["backbone"]["embedding"]),
                            backbone[("embedding",)])


def test_cost_end_to_end_writes_one_prediction_per_held_out_member(tiny_data_dir, pretrained,
                                                                   tmp_path):
  workdir = str(tmp_path / "cost")
  config = _config(cost_config, tiny_data_dir, pretrained)
  final = predict.train_and_predict(config, workdir)
  for key in ("eval_nmae", "eval_mae", "eval_r2", "eval_cpm", "eval_nmae_capped"):
    assert np.isfinite(final[key]), key
  path = final["predictions"]
  assert path == os.path.join(workdir, "predictions", "cost", "lmm_finetuned.parquet")
  names = pq.read_schema(path).names
  assert names[:3] == ["subject_id", "y_true", "y_pred"]
  assert {"y_pred_capped", "y_p10", "y_p50", "y_p90"} <= set(names)
  preds = predictions.read_cost_predictions(path)
  assert sorted(preds.subject_id.tolist()) == _held_out_ids(tiny_data_dir)
  assert np.all(preds.y_pred > 0) and np.all(preds.y_true >= 0)
  assert preds.meta["kind"] == "finetuned" and preds.meta["num_params"] > 0
  assert preds.meta["data_dir"] == os.path.abspath(tiny_data_dir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert any("eval_nmae" in r for r in rows) and any("train_loss" in r for r in rows)
  assert not any("subject" in k for r in rows for k in r)  # no per-member values in the logs


def test_chronic_end_to_end_frozen_backbone_new_onset_metrics(tiny_data_dir, pretrained,
                                                              tmp_path):
  workdir = str(tmp_path / "chronic")
  config = _config(chronic_config, tiny_data_dir, pretrained,
                   **{"optimizer.freeze_backbone": True, "model_name": "lmm_frozen"})
  final = predict.train_and_predict(config, workdir)
  assert 0.0 <= final["eval_macro_auroc"] <= 1.0
  assert 0.0 <= final["eval_macro_auroc_new_onset"] <= 1.0
  assert "eval_brier" in final and final["step"] == 2
  # The frozen backbone is bit-identical to the pretraining checkpoint; the head moved.
  before = _saved_params(pretrained)
  after = _saved_params(workdir)
  for k, v in before.items():
    np.testing.assert_array_equal(after[("backbone",) + k], v, err_msg="/".join(k))
  initial_bias = np.asarray(tasks.make_task(config).output_bias(), np.float32)
  assert not np.array_equal(after[("head", "out_bias")], initial_bias)
  preds = predictions.read_chronic_predictions(final["predictions"])
  assert preds.model == "lmm_frozen"
  assert preds.conditions == tuple(conditions.CONDITION_NAMES)
  assert sorted(preds.subject_id.tolist()) == _held_out_ids(tiny_data_dir)
  assert np.all((preds.y_pred >= 0) & (preds.y_pred <= 1))
