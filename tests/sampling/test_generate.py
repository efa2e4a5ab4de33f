"""Zero-shot predictions, synthetic MEDS patients and the memorization audit, end to end."""

import json
import os

from flax import nnx
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data_prep.configs import build_dataset as build_config
from lmm_jax import conditions
from lmm_jax import runs
from lmm_jax.data import build
from lmm_jax.data import meds_io
from lmm_jax.data import records
from lmm_jax.eval import predictions as pred_lib
from lmm_jax.model import Transformer
from lmm_jax.model import transformer
from lmm_jax.sampling import audit as audit_lib
from lmm_jax.sampling import decode
from lmm_jax.sampling import run
from lmm_jax.sampling import zero_shot
from lmm_jax.tasks.pretrain import backbone_config, load_vocab

from experiments.configs import generate as generate_config
from experiments.configs import pretrain as pretrain_config


@pytest.fixture(scope="module")
def pretrain_dir(tiny_data_dir, tmp_path_factory) -> str:
  """A pretraining workdir (config.json, run.json, orbax params) of a randomly initialized tiny
  model."""
  out = str(tmp_path_factory.mktemp("pretrain"))
  cfg = pretrain_config.get_config("tiny")
  cfg.data_dir = tiny_data_dir
  vocab = load_vocab(tiny_data_dir)
  model = Transformer(backbone_config(cfg.model, vocab.size, cfg.vocab_multiple),
                      rngs=nnx.Rngs(0))
  runs.record_run(out, cfg, vocab_size=vocab.size, vocab_multiple=cfg.vocab_multiple,
                  num_params=transformer.count_params(model))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  mgr = ocp.CheckpointManager(os.path.join(out, "checkpoints"))
  mgr.save(3, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))
  mgr.wait_until_finished()
  mgr.close()
  return out


def test_zero_shot_synthesize_and_audit(tiny_data_dir, pretrain_dir, tmp_path):
  cfg = generate_config.get_config("tiny")
  cfg.update_from_flattened_dict({"init_from": pretrain_dir, "data_dir": tiny_data_dir,
                                  "sampling.max_patients": 12})
  wd = str(tmp_path / "gen")
  result = run.generate_and_evaluate(cfg, wd)

  cost = pred_lib.read_cost_predictions(pred_lib.predictions_path(wd, "cost", "lmm_zero_shot"))
  assert cost.meta["kind"] == "zero-shot" and cost.meta["num_params"] > 0
  assert cost.subject_id.size == 12 and set(cost.quantiles) == {"p10", "p50", "p90"}
  assert np.all(cost.quantiles["p10"] <= cost.quantiles["p90"] + 1e-9)
  assert np.all(cost.y_pred >= 0)
  chronic = pred_lib.read_chronic_predictions(
      pred_lib.predictions_path(wd, "chronic", "lmm_zero_shot"))
  assert chronic.conditions == conditions.CONDITION_NAMES
  # Probabilities are shares of 4 futures.
  np.testing.assert_allclose(chronic.y_pred * 4, np.round(chronic.y_pred * 4), atol=1e-9)
  rows = result["zero_shot"]["curve"]
  assert [r["n"] for r in rows] == [1, 2, 4]
  # The cap share is reported; 12 members are a seeded subsample of the split, in record order.
  zs = result["zero_shot"]
  assert zs["cap_share"] == zs["sampling"]["stop_share"]["budget"] and 0 <= zs["cap_share"] <= 1
  held = [int(r["subject_id"]) for r in records.read_records(tiny_data_dir, records.TASK,
                                                             "held_out")]
  assert zs["members"] == 12 < zs["members_in_split"] == len(held)
  pos = [held.index(int(i)) for i in cost.subject_id]
  assert pos == sorted(pos) and pos != list(range(12))
  with open(os.path.join(wd, "zero_shot_vs_n.md")) as f:
    assert "-token cap before reaching the 12-month horizon" in f.read()
  for ext in ("csv", "md", "png"):
    assert os.path.getsize(os.path.join(wd, f"zero_shot_vs_n.{ext}")) > 0

  # Synthetic patients: a MEDS dataset the dataset builder reads back.
  meds_dir = os.path.join(wd, "synthetic_meds")
  shard = meds_io.read_shard(meds_io.data_files(meds_dir)[0])
  assert shard is not None
  assert result["synthetic"]["patients"] == 8
  bcfg = build_config.get_config()
  bcfg.num_workers, bcfg.progress = 1, False
  bcfg.required_splits = ()   # every synthetic subject is listed under train, none has a task
  bcfg.min_share_with_target_year_data = 0.0
  report = build.build_dataset(meds_dir, str(tmp_path / "synrec"), bcfg)
  assert report["used_rows"] > 0
  with open(os.path.join(wd, "memorization_audit.json")) as f:
    audit = json.load(f)
  assert audit["passed"] == result["passed"] and audit["synthetic_timelines"] == 8
  # Banned in sampling, so never generated: [UNK] and codes rarer than the builder's count.
  assert audit["rare_codes"] == 0 and audit["thresholds"]["min_train_count"] == 5


def test_audit_fails_on_copied_timelines(tiny_data_dir):
  vocab = load_vocab(tiny_data_dir)
  special = audit_lib.special_ids(vocab)
  train = audit_lib.load_references(tiny_data_dir, "train", special)
  held = audit_lib.load_references(tiny_data_dir, "held_out", special)
  copied = [t for t in train if len(t) > 30][:10]
  res = audit_lib.audit(copied, train, held, vocab, ngram=16, reference_patients=len(held),
                        seed=0, max_exact_share=0.01, max_ngram_excess=0.1,
                        max_closer_to_train=0.75, min_train_count=5)
  assert res["exact_share"] == 1.0 and not res["passed"]
  # Copies shorter than the identifying run length count in exact_share_any only.
  short = audit_lib.audit(copied, train, held, vocab, ngram=10_000,
                          reference_patients=len(held), seed=0, max_exact_share=0.01,
                          max_ngram_excess=1.0, max_closer_to_train=1.0, min_train_count=5)
  assert short["exact_share"] == 0.0 and short["exact_share_any"] == 1.0
  # Held-out timelines as "synthetic" ones copy nothing from train.
  ok = audit_lib.audit(held[:10], train, held[10:], vocab, ngram=16, reference_patients=1000,
                       seed=0, max_exact_share=0.01, max_ngram_excess=0.5,
                       max_closer_to_train=1.0, min_train_count=5)
  assert ok["exact_share"] == 0.0


def test_ngram_hashes_find_shared_runs():
  a = np.array([5, 6, 7, 8, 9, 10])
  b = np.array([1, 7, 8, 9, 2])
  ha, hb = audit_lib.ngram_hashes(a, 3), audit_lib.ngram_hashes(b, 3)
  assert ha.size == 4 and hb.size == 3
  assert np.isin(hb, ha).sum() == 1          # only 7 8 9
  assert audit_lib.ngram_hashes(b, 6).size == 0


def test_window_outcomes_counts_in_window_tokens_only():
  v, c = 8, conditions.NUM_CONDITIONS
  cost = np.zeros(v, np.float32)
  cost[5] = 100.0
  tc = np.zeros((v, c), np.uint8)
  tc[6, 2] = 1
  fut = decode.Futures(tokens=np.array([[5, 6, 5, 0], [5, 5, 6, 0]], np.int32),
                       clock=np.array([[3.0, 3.0, 40.0, 0], [50.0, 60.0, 70.0, 0]], np.float32),
                       num_tokens=np.array([3, 2], np.int32),
                       stop_reason=np.zeros(2, np.int8), num_samples=2)
  cost_r, cond_r = zero_shot.window_outcomes(fut, np.array([10.0, 10.0], np.float32), cost, tc)
  np.testing.assert_allclose(cost_r, [100.0, 200.0])  # row 0: only the token at day 40
  assert cond_r[:, 2].tolist() == [0, 0]              # row 0's 6 is before, row 1's beyond num
  agg = zero_shot.aggregate(cost_r.reshape(1, 2), cond_r.reshape(1, 2, c), 2)
  np.testing.assert_allclose(agg["y_pred"], [150.0])
