"""Baselines on a hand-made dataset with known signal (tests/baselines/fake_data.py)."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from lmm_jax import conditions
from lmm_jax.baselines import chronic as chronic_lib
from lmm_jax.baselines import cost as cost_lib
from lmm_jax.baselines import features
from lmm_jax.baselines import hcc as hcc_lib
from lmm_jax.baselines import oracle as oracle_lib
from lmm_jax.baselines import runner
from lmm_jax.data.vocab import Vocabulary
from lmm_jax.eval import predictions as P
from tests.baselines import fake_data

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
  return fake_data.write_dataset(str(tmp_path_factory.mktemp("fake")))


@pytest.fixture(scope="module")
def train(fake_dir):
  return features.load_split(fake_dir, "train", progress=False)


def test_load_split(train):
  assert len(train) == 300
  assert train.cond_next.shape == (300, conditions.NUM_CONDITIONS)
  assert train.subject_id.dtype == np.int64
  assert isinstance(train.dx_prior[0], list)


def test_age_band():
  np.testing.assert_array_equal(features.age_band([-1, 0, 17.9, 18, 64, 65, 85, 101]),
                                [0, 0, 0, 1, 4, 5, 7, 7])


def test_activity_counts_by_kind(fake_dir, train):
  vocab = Vocabulary.load(fake_dir)
  act, names = features.activity(train, vocab.kinds)
  i = 0
  tok = train.tokens[i]
  n_dx = int(np.sum(vocab.kinds[tok] == 3))
  assert act[i, names.index("n_diagnosis")] == n_dx
  assert act[i, names.index("n_diagnosis_last_year")] == n_dx  # all events within the year
  assert act[i, names.index("history_days")] == train.index_day[i] - train.days[i].min()


def test_frequent_tokens_and_counts(fake_dir, train):
  vocab = Vocabulary.load(fake_dir)
  ids = features.frequent_tokens(train, vocab.kinds, max_tokens=3)
  assert ids.size == 3
  assert all(vocab.kinds[i] in features.CODE_KINDS for i in ids)
  counts = features.token_counts(train, ids, vocab.size)
  for j, t in enumerate(ids):
    assert counts[0, j] == np.sum(train.tokens[0] == t)


def test_feature_set_rejects_foreign_token_ids(fake_dir, train):
  vocab = Vocabulary.load(fake_dir)
  fs = features.FeatureSet.fit(train, vocab.kinds, vocab.tokens, [[]] * len(train),
                               cost_value=vocab.cost_value)
  bad = train.subset(2)
  bad.tokens = [np.array([1, vocab.size + 3], np.int32)] * 2
  with pytest.raises(ValueError, match="outside the vocabulary"):
    fs.transform(bad, np.zeros(2), [[], []])


def test_hcc_scores(train):
  s = hcc_lib.score(train.subset(40), progress=False)
  diabetic = np.array(["E119" in dx for dx in train.dx_prior[:40]])
  assert diabetic.any() and (~diabetic).any()
  assert all("38" in h for h, d in zip(s.hccs, diabetic) if d)  # E11.9 -> V28 HCC 38
  assert np.all(s.risk_score > 0)
  counter = collections.Counter()
  demo = hcc_lib.demographics_of(-1.0, 0, 2, counter)
  assert demo["sex"] == "F" and demo["age"] == 0 and demo["dual_elgbl_cd"] == "NA"
  assert counter == {"unknown sex scored as female": 1, "unknown age scored as 0": 1}
  assert hcc_lib.demographics_of(70, 2, 3, counter)["dual_elgbl_cd"] == "02"


def test_cell_means_and_linear_fit():
  got = cost_lib.cell_means(np.array([0, 0, 1]), np.array([1.0, 3.0, 10.0]),
                            np.array([0, 1, 2]), 3)
  np.testing.assert_allclose(got, [2.0, 10.0, 14 / 3])  # empty cell 2: overall mean
  a, b = cost_lib.linear_fit(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0, 5.0]))
  assert (a, b) == (pytest.approx(1.0), pytest.approx(2.0))


def test_run_baselines_end_to_end(fake_dir, tmp_path):
  workdir = str(tmp_path / "w")
  summary = runner.run_baselines(fake_dir, workdir, seed=0, progress=False, num_threads=1)
  found = P.find_predictions(workdir)
  cost_models = sorted(os.path.basename(p)[:-8] for p in found["cost"])
  chronic_models = sorted(os.path.basename(p)[:-8] for p in found["chronic"])
  assert cost_models == sorted(runner.COST_MODELS + (runner.ORACLE,))
  assert chronic_models == sorted(runner.CHRONIC_MODELS + (runner.ORACLE,))
  held_out = features.load_split(fake_dir, "held_out", progress=False)
  for path in found["cost"]:
    p = P.read_cost_predictions(path)
    np.testing.assert_array_equal(p.subject_id, held_out.subject_id)
    np.testing.assert_allclose(p.y_true, held_out.cost_next)
    assert p.y_pred_capped is not None
    assert p.meta["split"] == "held_out" and p.meta["data_dir"] == os.path.abspath(fake_dir)
    assert p.meta["kind"] == ("oracle" if p.model == "oracle" else "baseline")
  chronic = {P.read_chronic_predictions(p).model: P.read_chronic_predictions(p)
             for p in found["chronic"]}
  np.testing.assert_array_equal(chronic["logistic"].y_prior, held_out.cond_prior)
  h = summary["headline"]
  # The fitted models find the diabetes / heart-failure signal the trivial ones cannot.
  assert h["lightgbm_cost"]["nmae"] < h["mean"]["nmae"]
  assert h["cms_hcc_v28"]["nmae"] < h["mean"]["nmae"]
  assert h["logistic"]["macro_auroc"] > h["prevalence_age_sex"]["macro_auroc"]
  assert h["lightgbm_chronic"]["macro_auroc"] > 0.5
  assert summary["members"] == {"train": 300, "tuning": 80, "held_out": 120}
  with open(os.path.join(workdir, runner.SUMMARY_FILE)) as f:
    text = f.read()
  assert json.loads(text)["headline"].keys() == h.keys()
  assert str(held_out.subject_id[0]) not in text  # no identifiers in the summary


def test_run_baselines_model_subset_and_unknown(fake_dir, tmp_path):
  summary = runner.run_baselines(fake_dir, str(tmp_path), models=["mean", "age_sex"],
                                 progress=False)
  assert sorted(summary["headline"]) == ["age_sex", "mean"]
  with pytest.raises(ValueError, match="unknown baseline"):
    runner.run_baselines(fake_dir, str(tmp_path), models=["magic"], progress=False)


def test_oracle_join_counts_missing_members(fake_dir, tmp_path):
  held_out = features.load_split(fake_dir, "held_out", progress=False)
  path = oracle_lib.oracle_path(fake_dir)
  table = pq.read_table(path)
  keep = [i for i, s in enumerate(table.column("subject_id").to_pylist())
          if s != int(held_out.subject_id[0])]
  small = str(tmp_path / "oracle.parquet")
  pq.write_table(table.take(keep), small)
  o = oracle_lib.load(small, held_out)
  assert o.notes == {"members without an oracle row": 1}
  np.testing.assert_array_equal(o.rows, np.arange(1, len(held_out)))
  assert o.p_MxC.shape == (len(held_out) - 1, conditions.NUM_CONDITIONS)
  pq.write_table(table.drop_columns(["p_stroke"]), small)
  with pytest.raises(ValueError, match="p_stroke"):
    oracle_lib.load(small, held_out)


def test_baselines_binary(fake_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.baselines", f"--data_dir={fake_dir}",
       f"--workdir={tmp_path}", "--models=mean,prior_cost,oracle", "--noprogress"],
      capture_output=True, text=True, check=True, cwd=REPO)
  assert json.loads(result.stdout)["members"]["held_out"] == 120
  assert os.path.exists(tmp_path / "predictions" / "cost" / "prior_cost.parquet")
  assert os.path.exists(tmp_path / "predictions" / "chronic" / "oracle.parquet")


def _recency_data(histories, index_day=1000):
  """TaskData of members whose histories are lists of (token id, days before the index)."""
  n = len(histories)
  z = np.zeros(n)
  return features.TaskData(
      "train", np.arange(n, dtype=np.int64), np.full(n, index_day, np.int32),
      np.ones(n, np.int8), np.ones(n, np.int8), np.full(n, 50, np.float32), z, z, z,
      np.zeros((n, conditions.NUM_CONDITIONS), np.uint8),
      np.zeros((n, conditions.NUM_CONDITIONS), np.uint8), [[] for _ in range(n)],
      [np.array([t for t, _ in h], np.int32) for h in histories],
      [np.array([index_day - d for _, d in h], np.int32) for h in histories])


def test_recency_features_reflect_planted_events():
  tokens = ["[PAD]", "CLAIM//INPATIENT", "CLAIM//EMERGENCY", "CLAIM//PHARMACY",
            "CLAIM//PROFESSIONAL", "COST//BIN00", "COST//BIN01", "ICD10CM//I10"]
  kinds = np.array([0, 7, 7, 7, 7, 6, 6, 3], np.int8)
  cost_value = np.array([0, 0, 0, 0, 0, 100.0, 5000.0, 0])
  ids = features.claim_type_ids(tokens)
  assert ids == {"inpatient": 1, "er": 2, "fill": 3}
  data = _recency_data([
      # an admission 30 days ago ($5,000), a fill 100 days ago ($100), an office visit 300 ago
      [(4, 300), (5, 300), (7, 300), (3, 100), (5, 100), (1, 30), (6, 30)],
      # an ER visit 200 days ago ($5,000) and nothing since: a falling trend
      [(2, 200), (6, 200)],
      [],   # no history at all
  ])
  x, names = features.recency(data, kinds, cost_value, ids)
  col = lambda name: x[:, names.index(name)]
  assert len(names) == len(set(names)) == x.shape[1]
  np.testing.assert_array_equal(col("claims_90d"), [1, 0, 0])
  np.testing.assert_array_equal(col("claims_365d"), [3, 1, 0])
  np.testing.assert_array_equal(col("cost_90d"), [5000, 0, 0])
  np.testing.assert_array_equal(col("cost_180d"), [5100, 0, 0])
  np.testing.assert_array_equal(col("inpatient_90d"), [1, 0, 0])
  np.testing.assert_array_equal(col("er_180d"), [0, 0, 0])
  np.testing.assert_array_equal(col("er_365d"), [0, 1, 0])
  np.testing.assert_array_equal(col("fill_180d"), [1, 0, 0])
  np.testing.assert_array_equal(col("days_since_inpatient"), [30, features.NO_EVENT_DAYS,
                                                              features.NO_EVENT_DAYS])
  np.testing.assert_array_equal(col("days_since_er"), [features.NO_EVENT_DAYS, 200,
                                                       features.NO_EVENT_DAYS])
  np.testing.assert_array_equal(col("days_since_claim"), [30, 200, features.NO_EVENT_DAYS])
  np.testing.assert_array_equal(col("cost_prior_half_year"), [100, 5000, 0])
  np.testing.assert_allclose(col("cost_trend"), [np.log1p(5100) - np.log1p(100),
                                                -np.log1p(5000), 0], rtol=1e-6)


def test_recency_is_the_same_in_chunks(monkeypatch):
  rng = np.random.default_rng(0)
  kinds = np.array([0, 7, 7, 7, 7, 6, 6, 3], np.int8)
  cost_value = np.array([0, 0, 0, 0, 0, 100.0, 5000.0, 0])
  ids = {"inpatient": 1, "er": 2, "fill": 3}
  hist = [[(int(rng.integers(1, 8)), int(rng.integers(1, 700))) for _ in range(rng.integers(0, 9))]
          for _ in range(50)]
  whole, _ = features.recency(_recency_data(hist), kinds, cost_value, ids)
  monkeypatch.setattr(features, "_RECENCY_CHUNK", 7)
  chunked, _ = features.recency(_recency_data(hist), kinds, cost_value, ids)
  np.testing.assert_array_equal(whole, chunked)


def test_recency_features_predict_a_planted_admission_effect():
  """Members admitted in the last 90 days cost more next year: LightGBM finds it by recency."""
  rng = np.random.default_rng(1)
  kinds = np.array([0, 7, 7, 7, 7, 6, 6, 3], np.int8)
  cost_value = np.array([0, 0, 0, 0, 0, 100.0, 5000.0, 0])
  fs_tokens = ["[PAD]", "CLAIM//INPATIENT", "CLAIM//EMERGENCY", "CLAIM//PHARMACY",
               "CLAIM//PROFESSIONAL", "COST//BIN00", "COST//BIN01", "ICD10CM//I10"]

  def split(n):
    # Everyone had one admission in the year; only its recency carries the signal.
    back = rng.integers(1, 365, n)
    data = _recency_data([[(1, int(b)), (6, int(b)), (4, 400), (7, 400)] for b in back])
    data.cost_next = np.where(back <= 90, 20_000.0, 2_000.0) * rng.uniform(0.8, 1.2, n)
    data.cost_next_capped = data.cost_next
    return data

  train, tuning, test = split(600), split(200), split(300)
  fs = features.FeatureSet.fit(train, kinds, fs_tokens, [[]] * len(train), cost_value=cost_value)
  x = {k: fs.transform(d, np.zeros(len(d)), [[]] * len(d))[0]
       for k, d in (("train", train), ("tuning", tuning), ("test", test))}
  pred = cost_lib.lightgbm_model(train, tuning, test, x["train"], x["tuning"], x["test"])
  recent = test.cost_next > 10_000
  assert pred.y_pred[recent].min() > 3 * pred.y_pred[~recent].max()


def test_median_and_copy_forward_baselines(fake_dir, tmp_path):
  summary = runner.run_baselines(
      fake_dir, str(tmp_path), models=["lightgbm_cost", "lightgbm_median", "copy_forward"],
      progress=False)
  assert summary["refused"] == {}
  found = P.find_predictions(str(tmp_path))
  cost = {P.read_cost_predictions(p).model: P.read_cost_predictions(p) for p in found["cost"]}
  # Costs are exponential given the features: the median (ln 2 x mean) sits below the mean.
  assert cost["lightgbm_median"].y_pred.mean() < 0.9 * cost["lightgbm_cost"].y_pred.mean()
  h = summary["headline"]
  assert h["lightgbm_median"]["nmae"] < h["lightgbm_cost"]["nmae"]
  np.testing.assert_array_equal(cost["lightgbm_median"].y_pred_capped,
                                np.minimum(cost["lightgbm_median"].y_pred, 250_000))
  chronic = P.read_chronic_predictions(found["chronic"][0])
  assert chronic.model == "copy_forward"
  np.testing.assert_array_equal(chronic.y_pred, chronic.y_prior)


def test_lightgbm_picks_leaves_on_tuning_only(monkeypatch, fake_dir):
  """The held-out rows never reach the fit: permuting their labels changes nothing."""
  data = {s: features.load_split(fake_dir, s, progress=False) for s in ("train", "tuning",
                                                                        "held_out")}
  x = {s: np.c_[d.cost_prior, d.age] for s, d in data.items()}
  a = cost_lib.lightgbm_median_model(data["train"], data["tuning"], data["held_out"], x["train"],
                                     x["tuning"], x["held_out"])
  data["held_out"].cost_next = data["held_out"].cost_next[::-1].copy()
  b = cost_lib.lightgbm_median_model(data["train"], data["tuning"], data["held_out"], x["train"],
                                     x["tuning"], x["held_out"])
  np.testing.assert_array_equal(a.y_pred, b.y_pred)


def test_baselines_refuse_all_zero_costs_and_run_the_rest(tmp_path):
  data_dir = fake_data.write_dataset(str(tmp_path / "d"), zero_cost=True)
  summary = runner.run_baselines(data_dir, str(tmp_path / "w"), progress=False)
  refused = summary["refused"]
  assert refused["lightgbm_cost"] == ("cost baseline lightgbm_cost: all 300 training targets "
                                      "are zero (no cost in the target window)")
  assert set(refused) == set(runner.COST_MODELS)  # prior_cost: held-out costs are all zero
  assert "held_out (evaluated)" in refused["prior_cost"]
  assert all("\n" not in m for m in refused.values())
  assert set(runner.CHRONIC_MODELS) <= set(summary["headline"])  # the chronic task still runs
  found = P.find_predictions(str(tmp_path / "w"))
  assert not any(os.path.basename(p)[:-8] in runner.COST_MODELS for p in found["cost"])


def test_chronic_baselines_refuse_a_split_without_positives(train):
  empty = train.subset(50)
  empty.cond_next = np.zeros_like(empty.cond_next)
  with pytest.raises(features.DegenerateDataError, match="no positive label among the 50 "):
    chronic_lib.logistic_model(empty, empty, np.ones((50, 2)), np.ones((50, 2)), progress=False)


def test_oracle_median_row(tmp_path):
  data_dir = fake_data.write_dataset(str(tmp_path / "d"), with_median=True)
  summary = runner.run_baselines(data_dir, str(tmp_path / "w"), models=["oracle"],
                                 progress=False)
  cost_dir = tmp_path / "w" / "predictions" / "cost"
  p = P.read_cost_predictions(str(cost_dir / "oracle_median.parquet"))
  o = P.read_cost_predictions(str(cost_dir / "oracle.parquet"))
  assert p.meta["kind"] == "oracle"
  np.testing.assert_allclose(p.y_pred, np.log(2.0) * o.y_pred)
  assert summary["headline"]["oracle_median"]["nmae"] < summary["headline"]["oracle"]["nmae"]
