"""Cost baselines: each fits on the train split and predicts next-12-month dollars on another.

Every model predicts both targets: the uncapped cost (`y_pred`) and, fitted separately, the cost
truncated at $250k (`y_pred_capped`), as in the Society of Actuaries comparisons.
  mean         the train mean
  prior_cost   last year's allowed cost, as is (the naive actuarial forecast)
  age_sex      train mean of the member's age band x sex cell (overall mean for an empty cell)
  cms_hcc_v28  the CMS-HCC V28 risk score, recalibrated to dollars by least squares on train
               (cost = a + b * score): the industry-standard risk model
  lightgbm     gradient-boosted trees (Tweedie loss, variance power 1.5, suited to many zeros and
               a heavy tail) on demographics, prior cost, HCCs and code counts; early stopping on
               the tuning split
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import lightgbm as lgb
import numpy as np

from lmm_jax import conventions
from lmm_jax.baselines import features


@dataclasses.dataclass
class CostPrediction:
  y_pred: np.ndarray          # float64[N] dollars
  y_pred_capped: np.ndarray   # float64[N] dollars, prediction of the capped target
  description: str


def _targets(data: features.TaskData) -> dict[str, np.ndarray]:
  return {"raw": data.cost_next, "capped": data.cost_next_capped}


def mean_model(train: features.TaskData, test: features.TaskData) -> CostPrediction:
  t = _targets(train)
  n = len(test)
  return CostPrediction(np.full(n, t["raw"].mean()), np.full(n, t["capped"].mean()),
                        "Overall mean of the train split.")


def prior_cost_model(train: features.TaskData, test: features.TaskData) -> CostPrediction:
  del train
  prior = np.maximum(test.cost_prior, 0.0)
  return CostPrediction(prior, np.minimum(prior, conventions.COST_CAP),
                        "Allowed cost of the 12 months before the index date.")


def cell_means(cells_train: np.ndarray, y_train: np.ndarray, cells_test: np.ndarray,
               num_cells: int) -> np.ndarray:
  """Mean of y_train per cell; the overall mean for cells with no train member."""
  count = np.bincount(cells_train, minlength=num_cells)
  total = np.bincount(cells_train, weights=y_train, minlength=num_cells)
  means = np.where(count > 0, total / np.maximum(count, 1), y_train.mean())
  return means[cells_test]


def age_sex_cells(data: features.TaskData) -> np.ndarray:
  return features.age_band(data.age) * 3 + data.sex.astype(np.int64)


def age_sex_model(train: features.TaskData, test: features.TaskData) -> CostPrediction:
  num = len(features.AGE_BANDS) * 3
  ctr, cte = age_sex_cells(train), age_sex_cells(test)
  t = _targets(train)
  return CostPrediction(cell_means(ctr, t["raw"], cte, num), cell_means(ctr, t["capped"], cte, num),
                        "Train mean cost of the age band x sex cell.")


def linear_fit(x_train: np.ndarray, y_train: np.ndarray) -> tuple[float, float]:
  """Least-squares intercept and slope of y on x."""
  design = np.stack([np.ones_like(x_train), x_train], axis=1)
  (a, b), *_ = np.linalg.lstsq(design, y_train, rcond=None)
  return float(a), float(b)


def hcc_model(train: features.TaskData, test: features.TaskData, risk_train: np.ndarray,
              risk_test: np.ndarray) -> CostPrediction:
  t = _targets(train)
  out = []
  for key in ("raw", "capped"):
    a, b = linear_fit(risk_train, t[key])
    out.append(a + b * risk_test)
  return CostPrediction(out[0], out[1],
                        "CMS-HCC V28 risk score (hccinfhir) recalibrated to dollars by least "
                        "squares on train.")


def lightgbm_model(train: features.TaskData, tuning: features.TaskData,
                   test: features.TaskData, x_train: np.ndarray, x_tuning: np.ndarray,
                   x_test: np.ndarray, *, seed: int = 0,
                   num_threads: int = 1, max_rounds: int = 400) -> CostPrediction:
  params = {"objective": "tweedie", "tweedie_variance_power": 1.5, "learning_rate": 0.05,
            "num_leaves": 31, "min_data_in_leaf": 20, "feature_fraction": 0.8,
            "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "seed": seed,
            "num_threads": num_threads, "verbose": -1, "deterministic": True}
  out = []
  for key in ("raw", "capped"):
    y_tr, y_tu = _targets(train)[key], _targets(tuning)[key]
    dtrain = lgb.Dataset(x_train, y_tr, free_raw_data=False)
    dtune = lgb.Dataset(x_tuning, y_tu, reference=dtrain)
    booster = lgb.train(params, dtrain, num_boost_round=max_rounds, valid_sets=[dtune],
                        callbacks=[lgb.early_stopping(30, verbose=False)])
    out.append(booster.predict(x_test, num_iteration=booster.best_iteration).astype(np.float64))
  return CostPrediction(out[0], out[1],
                        "LightGBM (Tweedie) on demographics, prior cost, CMS-HCC V28 HCCs and "
                        "risk score, token counts by kind and counts of frequent codes; early "
                        "stopping on the tuning split.")


COST_BASELINES: dict[str, Callable] = {
    "mean": mean_model, "prior_cost": prior_cost_model, "age_sex": age_sex_model,
    "cms_hcc_v28": hcc_model, "lightgbm_cost": lightgbm_model,
}
