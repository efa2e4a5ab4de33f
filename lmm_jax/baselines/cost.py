"""Cost baselines: each fits on the train split and predicts next-12-month dollars on another.

Every model predicts both targets: the uncapped cost (`y_pred`) and, fitted separately, the cost
truncated at $250k (`y_pred_capped`), as in the Society of Actuaries comparisons.
  mean         the train mean
  prior_cost   last year's allowed cost, as is (the naive actuarial forecast)
  age_sex      train mean of the member's age band x sex cell (overall mean for an empty cell)
  cms_hcc_v28  the CMS-HCC V28 risk score, recalibrated to dollars by least squares on train
               (cost = a + b * score): the industry-standard risk model
  lightgbm     gradient-boosted trees (Tweedie loss, variance power 1.5, suited to many zeros and
               a heavy tail) on demographics, prior cost, HCCs, recency and code counts: the
               conditional mean
  lightgbm_median  the same trees with the L1 loss: the conditional median, which NMAE rewards
Both LightGBM models stop early on the tuning split and pick their number of leaves (LEAVES_GRID)
by the tuning loss; the held-out split is never looked at. Every model refuses training targets
that are all zero, negative or not finite (`check_targets`), as real MEDS data without cost gives.
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


LEAVES_GRID = (15, 31, 63)   # LightGBM num_leaves tried; the tuning loss picks one


def _targets(data: features.TaskData) -> dict[str, np.ndarray]:
  return {"raw": data.cost_next, "capped": data.cost_next_capped}


def check_targets(name: str, data: features.TaskData, role: str = "training") -> None:
  """Raises DegenerateDataError unless the cost targets are finite, >= 0 and not all zero."""
  y = np.asarray(data.cost_next, np.float64)
  n = y.size
  bad = int(np.sum(~np.isfinite(y)))
  if bad:
    raise features.DegenerateDataError(f"cost baseline {name}: {bad} of {n} {role} targets are "
                                       "not finite")
  neg = int(np.sum(y < 0))
  if neg:
    raise features.DegenerateDataError(f"cost baseline {name}: {neg} of {n} {role} targets are "
                                       "negative")
  if not np.any(y > 0):
    raise features.DegenerateDataError(f"cost baseline {name}: all {n} {role} targets are zero "
                                       "(no cost in the target window)")


def mean_model(train: features.TaskData, test: features.TaskData) -> CostPrediction:
  check_targets("mean", train)
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
  check_targets("age_sex", train)
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
  check_targets("cms_hcc_v28", train)
  t = _targets(train)
  out = []
  for key in ("raw", "capped"):
    a, b = linear_fit(risk_train, t[key])
    out.append(a + b * risk_test)
  return CostPrediction(out[0], out[1],
                        "CMS-HCC V28 risk score (hccinfhir) recalibrated to dollars by least "
                        "squares on train.")


_LGB_PARAMS = {"learning_rate": 0.05, "min_data_in_leaf": 20, "feature_fraction": 0.8,
               "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "verbose": -1,
               "deterministic": True}


def fit_lightgbm(params: dict, x_train: np.ndarray, y_train: np.ndarray, x_tuning: np.ndarray,
                 y_tuning: np.ndarray, *, max_rounds: int,
                 leaves_grid: tuple[int, ...] = LEAVES_GRID) -> lgb.Booster:
  """The booster of the num_leaves with the best tuning loss, each stopped early on tuning."""
  dtrain = lgb.Dataset(x_train, y_train, params=params, free_raw_data=False).construct()
  dtune = lgb.Dataset(x_tuning, y_tuning, reference=dtrain, free_raw_data=False).construct()
  best, best_loss = None, np.inf
  for leaves in leaves_grid:
    booster = lgb.train({**params, "num_leaves": leaves}, dtrain, num_boost_round=max_rounds,
                        valid_sets=[dtune], valid_names=["tuning"],
                        callbacks=[lgb.early_stopping(30, verbose=False)])
    loss = next(iter(booster.best_score["tuning"].values()))
    if loss < best_loss:
      best, best_loss = booster, loss
  return best


def _lightgbm(name: str, objective: dict, train: features.TaskData, tuning: features.TaskData,
              x_train: np.ndarray, x_tuning: np.ndarray, x_test: np.ndarray, *, seed: int,
              num_threads: int, max_rounds: int, capped_by_truncation: bool) -> list[np.ndarray]:
  check_targets(name, train)
  check_targets(name, tuning, "tuning")
  params = {**_LGB_PARAMS, **objective, "seed": seed, "num_threads": num_threads}
  out = []
  for key in ("raw",) if capped_by_truncation else ("raw", "capped"):
    booster = fit_lightgbm(params, x_train, _targets(train)[key], x_tuning, _targets(tuning)[key],
                           max_rounds=max_rounds)
    out.append(booster.predict(x_test, num_iteration=booster.best_iteration).astype(np.float64))
  if capped_by_truncation:  # the median of min(y, cap) is min(median, cap)
    out.append(np.minimum(out[0], conventions.COST_CAP))
  return out


def lightgbm_model(train: features.TaskData, tuning: features.TaskData,
                   test: features.TaskData, x_train: np.ndarray, x_tuning: np.ndarray,
                   x_test: np.ndarray, *, seed: int = 0,
                   num_threads: int = 1, max_rounds: int = 400) -> CostPrediction:
  del test
  raw, capped = _lightgbm("lightgbm_cost", {"objective": "tweedie", "tweedie_variance_power": 1.5},
                          train, tuning, x_train, x_tuning, x_test, seed=seed,
                          num_threads=num_threads, max_rounds=max_rounds,
                          capped_by_truncation=False)
  return CostPrediction(raw, capped,
                        "LightGBM (Tweedie) on demographics, prior cost, CMS-HCC V28 HCCs and "
                        "risk score, token counts by kind, recency and counts of frequent codes; "
                        "leaves and early stopping on the tuning split.")


def lightgbm_median_model(train: features.TaskData, tuning: features.TaskData,
                          test: features.TaskData, x_train: np.ndarray, x_tuning: np.ndarray,
                          x_test: np.ndarray, *, seed: int = 0, num_threads: int = 1,
                          max_rounds: int = 600) -> CostPrediction:
  del test
  raw, capped = _lightgbm("lightgbm_median", {"objective": "l1"}, train, tuning, x_train,
                          x_tuning, x_test, seed=seed, num_threads=num_threads,
                          max_rounds=max_rounds, capped_by_truncation=True)
  return CostPrediction(np.maximum(raw, 0.0), np.maximum(capped, 0.0),
                        "LightGBM with the L1 loss (the conditional median, which NMAE rewards) "
                        "on the features of lightgbm_cost; leaves and early stopping on the "
                        "tuning split.")


COST_BASELINES: dict[str, Callable] = {
    "mean": mean_model, "prior_cost": prior_cost_model, "age_sex": age_sex_model,
    "cms_hcc_v28": hcc_model, "lightgbm_cost": lightgbm_model,
    "lightgbm_median": lightgbm_median_model,
}
