"""Chronic-condition baselines: a probability per member and condition of being coded next year.

  prevalence_age_sex   train rate of the condition in the member's age band x sex cell, smoothed
                       toward the overall rate by one pseudo-member
  logistic             scikit-learn logistic regression (L2, C=0.1, standardized features) per
                       condition on bag-of-codes (log1p counts of frequent tokens), demographics,
                       activity counts, prior cost and prevalent-condition flags
  lightgbm_chronic     LightGBM binary classifier per condition on the same features as the cost
                       LightGBM; early stopping on the tuning split
  copy_forward         the prevalent-before-index flag (cond_prior) as the score: "it was coded
                       before, so it will be coded again"; the floor every model must clear
A condition with a single class on train gets its train rate (counted in `notes`). The fitted
models refuse a train split without any positive label (`check_labels`).
"""

from __future__ import annotations

import collections
import dataclasses

import lightgbm as lgb
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
import tqdm

from lmm_jax import conditions
from lmm_jax.baselines import cost as cost_lib
from lmm_jax.baselines import features


@dataclasses.dataclass
class ChronicPrediction:
  y_pred: np.ndarray          # float64[N, C] probabilities
  description: str
  notes: dict[str, int] = dataclasses.field(default_factory=dict)


def check_labels(name: str, data: features.TaskData, role: str = "training") -> None:
  """Raises DegenerateDataError when no condition has a positive label in `data`."""
  if not np.any(data.cond_next):
    raise features.DegenerateDataError(
        f"chronic baseline {name}: no positive label among the {len(data)} {role} members for "
        f"any of the {data.cond_next.shape[1]} conditions")


def copy_forward_model(test: features.TaskData) -> ChronicPrediction:
  return ChronicPrediction(test.cond_prior.astype(np.float64),
                           "Copy-forward: 1 if the condition was coded before the index date "
                           "(cond_prior), else 0.")


def prevalence_model(train: features.TaskData, test: features.TaskData) -> ChronicPrediction:
  check_labels("prevalence_age_sex", train)
  num = len(features.AGE_BANDS) * 3
  ctr, cte = cost_lib.age_sex_cells(train), cost_lib.age_sex_cells(test)
  y = train.cond_next.astype(np.float64)
  overall_C = y.mean(axis=0)
  count = np.bincount(ctr, minlength=num).astype(np.float64)
  pos_KxC = np.stack([np.bincount(ctr, weights=y[:, c], minlength=num)
                      for c in range(y.shape[1])], axis=1)
  rate_KxC = (pos_KxC + overall_C[None, :]) / (count[:, None] + 1.0)
  return ChronicPrediction(rate_KxC[cte], "Train rate of the condition in the age band x sex "
                           "cell (smoothed toward the overall rate by one pseudo-member).")


def _single_class(y: np.ndarray) -> bool:
  return y.min() == y.max()


def signed_log1p(x: np.ndarray) -> np.ndarray:
  """sign(x) log1p(|x|): log1p for the counts and dollars, and keeps a trend's sign."""
  return np.sign(x) * np.log1p(np.abs(x))


def logistic_model(train: features.TaskData, test: features.TaskData, x_train: np.ndarray,
                   x_test: np.ndarray, *, seed: int = 0,
                   progress: bool = True) -> ChronicPrediction:
  check_labels("logistic", train)
  scaler = StandardScaler().fit(signed_log1p(x_train))
  xs_train = scaler.transform(signed_log1p(x_train))
  xs_test = scaler.transform(signed_log1p(x_test))
  notes = collections.Counter()
  out = np.zeros((len(test), conditions.NUM_CONDITIONS))
  for c in tqdm.trange(conditions.NUM_CONDITIONS, desc="logistic", disable=not progress):
    y = train.cond_next[:, c]
    if _single_class(y):
      out[:, c] = y.mean()
      notes["condition with one class on train: train rate"] += 1
      continue
    clf = LogisticRegression(C=0.1, max_iter=500, random_state=seed).fit(xs_train, y)
    out[:, c] = clf.predict_proba(xs_test)[:, 1]
  return ChronicPrediction(out, "Logistic regression per condition (L2, C=0.1) on log1p "
                           "bag-of-codes counts, demographics, activity, prior cost and "
                           "prevalent-condition flags, standardized.", dict(notes))


def lightgbm_model(train: features.TaskData, tuning: features.TaskData, x_train: np.ndarray,
                   x_tuning: np.ndarray, x_test: np.ndarray, *, seed: int = 0,
                   num_threads: int = 1, max_rounds: int = 200,
                   progress: bool = True) -> ChronicPrediction:
  check_labels("lightgbm_chronic", train)
  params = {"objective": "binary", "learning_rate": 0.05, "num_leaves": 15,
            "min_data_in_leaf": 20, "feature_fraction": 0.8, "bagging_fraction": 0.8,
            "bagging_freq": 1, "lambda_l2": 1.0, "seed": seed, "num_threads": num_threads,
            "verbose": -1, "deterministic": True}
  notes = collections.Counter()
  out = np.zeros((x_test.shape[0], conditions.NUM_CONDITIONS))
  # Bin the features once; each condition only swaps the labels.
  dtrain = lgb.Dataset(x_train, np.zeros(x_train.shape[0]), params=params,
                       free_raw_data=False).construct()
  dtune = lgb.Dataset(x_tuning, np.zeros(x_tuning.shape[0]), reference=dtrain,
                      free_raw_data=False).construct()
  for c in tqdm.trange(conditions.NUM_CONDITIONS, desc="lightgbm chronic", disable=not progress):
    y, y_tune = train.cond_next[:, c], tuning.cond_next[:, c]
    if _single_class(y):
      out[:, c] = y.mean()
      notes["condition with one class on train: train rate"] += 1
      continue
    dtrain.set_label(y.astype(np.float64))
    valid, callbacks = [], []
    if not _single_class(y_tune):
      dtune.set_label(y_tune.astype(np.float64))
      valid = [dtune]
      callbacks = [lgb.early_stopping(20, verbose=False)]
    else:
      notes["condition with one class on tuning: no early stopping"] += 1
    booster = lgb.train(params, dtrain, num_boost_round=max_rounds, valid_sets=valid,
                        callbacks=callbacks, keep_training_booster=False)
    best = booster.best_iteration if booster.best_iteration > 0 else None
    out[:, c] = booster.predict(x_test, num_iteration=best)
  return ChronicPrediction(np.clip(out, 0.0, 1.0),
                           "LightGBM binary classifier per condition on demographics, prior "
                           "cost, HCCs, activity, prevalent-condition flags and frequent-code "
                           "counts; early stopping on the tuning split.", dict(notes))
