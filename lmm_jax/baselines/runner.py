"""Fits every baseline on train (tuning for early stopping) and writes held-out predictions.

  summary = run_baselines(data_dir, workdir)

writes workdir/predictions/{cost,chronic}/MODEL.parquet (lmm_jax.eval.predictions), the oracle rows
when the synthetic world's ground truth is available, and workdir/baselines_summary.json (headline
metrics, timings, member counts, counts of fallbacks by reason and, under "refused", the one-line
reason of every baseline that could not be fitted on degenerate data, e.g. all-zero costs; no
identifiers). A refused baseline writes no file; the others still run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np
import threadpoolctl

from lmm_jax import conventions
from lmm_jax.baselines import chronic as chronic_lib
from lmm_jax.baselines import cost as cost_lib
from lmm_jax.baselines import features
from lmm_jax.baselines import hcc as hcc_lib
from lmm_jax.baselines import oracle as oracle_lib
from lmm_jax.data.vocab import Vocabulary
from lmm_jax.eval import metrics
from lmm_jax.eval import predictions as preds_io

ORACLE = "oracle"
ORACLE_MEDIAN = oracle_lib.ORACLE_MEDIAN  # cost row from the oracle's median_cost, when present
SUMMARY_FILE = "baselines_summary.json"


@dataclasses.dataclass
class Inputs:
  """What a baseline may use: the splits, the HCC risk scores and the tabular features."""
  train: features.TaskData
  tuning: features.TaskData
  test: features.TaskData
  risk: dict[str, np.ndarray]      # CMS-HCC V28 risk score per split name
  x: dict[str, np.ndarray]         # feature matrix per split name (baselines that need it)
  split: str                       # the predicted split's name
  seed: int
  num_threads: int
  progress: bool


# name -> fit on train (and tuning for early stopping), predict the test split. A new baseline is
# its fit/predict function in cost.py or chronic.py and one entry here.
COST_BASELINES: dict[str, Callable[[Inputs], cost_lib.CostPrediction]] = {
    "mean": lambda i: cost_lib.mean_model(i.train, i.test),
    "prior_cost": lambda i: cost_lib.prior_cost_model(i.train, i.test),
    "age_sex": lambda i: cost_lib.age_sex_model(i.train, i.test),
    "cms_hcc_v28": lambda i: cost_lib.hcc_model(i.train, i.test, i.risk[conventions.TRAIN],
                                                i.risk[i.split]),
    "lightgbm_cost": lambda i: cost_lib.lightgbm_model(
        i.train, i.tuning, i.test, i.x[conventions.TRAIN], i.x[conventions.TUNING], i.x[i.split],
        seed=i.seed, num_threads=i.num_threads),
    "lightgbm_median": lambda i: cost_lib.lightgbm_median_model(
        i.train, i.tuning, i.test, i.x[conventions.TRAIN], i.x[conventions.TUNING], i.x[i.split],
        seed=i.seed, num_threads=i.num_threads),
}
CHRONIC_BASELINES: dict[str, Callable[[Inputs], chronic_lib.ChronicPrediction]] = {
    "copy_forward": lambda i: chronic_lib.copy_forward_model(i.test),
    "prevalence_age_sex": lambda i: chronic_lib.prevalence_model(i.train, i.test),
    "logistic": lambda i: chronic_lib.logistic_model(i.train, i.test, i.x[conventions.TRAIN],
                                                     i.x[i.split], seed=i.seed,
                                                     progress=i.progress),
    "lightgbm_chronic": lambda i: chronic_lib.lightgbm_model(
        i.train, i.tuning, i.x[conventions.TRAIN], i.x[conventions.TUNING], i.x[i.split],
        seed=i.seed, num_threads=i.num_threads, progress=i.progress),
}
NEEDS_FEATURES = frozenset({"lightgbm_cost", "lightgbm_median", "logistic", "lightgbm_chronic"})
NEEDS_HCC = NEEDS_FEATURES | {"cms_hcc_v28"}
COST_MODELS = tuple(COST_BASELINES)
CHRONIC_MODELS = tuple(CHRONIC_BASELINES)


class _Timer:
  def __init__(self):
    self.seconds = {}

  def __call__(self, name: str):
    timer = self

    class _Span:
      def __enter__(self):
        self.start = time.perf_counter()

      def __exit__(self, *exc):
        timer.seconds[name] = timer.seconds.get(name, 0.0) + time.perf_counter() - self.start
    return _Span()


def _check_models(models: Sequence[str] | None) -> tuple[set[str], set[str], bool]:
  if models is None:
    return set(COST_MODELS), set(CHRONIC_MODELS), True
  known = set(COST_MODELS) | set(CHRONIC_MODELS) | {ORACLE}
  unknown = sorted(set(models) - known)
  if unknown:
    raise ValueError(f"unknown baseline(s) {unknown}; known: {sorted(known)}")
  return set(models) & set(COST_MODELS), set(models) & set(CHRONIC_MODELS), ORACLE in models


def run_baselines(data_dir: str, workdir: str, *, split: str = conventions.HELD_OUT,
                  models: Sequence[str] | None = None, seed: int = 0, max_tokens: int = 512,
                  num_threads: int = 1, progress: bool = True,
                  data: dict[str, features.TaskData] | None = None) -> dict:
  """Runs the baselines; returns the summary also written to workdir/baselines_summary.json.

  `data` may hold already loaded splits (train, tuning, and `split`), e.g. for benchmarks.
  """
  # BLAS threads fight each other (and other processes) on small problems: one per thread of ours.
  with threadpoolctl.threadpool_limits(limits=num_threads if num_threads > 0 else None):
    return _run(data_dir, workdir, split=split, models=models, seed=seed, max_tokens=max_tokens,
                num_threads=num_threads, progress=progress, data=data)


def _run(data_dir: str, workdir: str, *, split: str, models: Sequence[str] | None, seed: int,
         max_tokens: int, num_threads: int, progress: bool,
         data: dict[str, features.TaskData] | None) -> dict:
  cost_models, chronic_models, with_oracle = _check_models(models)
  timer = _Timer()
  data_dir = os.path.abspath(data_dir)
  vocab = Vocabulary.load(data_dir)
  data = dict(data or {})
  with timer("read"):
    for s in dict.fromkeys((conventions.TRAIN, conventions.TUNING, split)):
      if s not in data:
        data[s] = features.load_split(data_dir, s, progress)
  train, tuning, test = data[conventions.TRAIN], data[conventions.TUNING], data[split]
  logging.info("baselines: %d train, %d tuning, %d %s members", len(train), len(tuning), len(test),
               split)
  notes: dict[str, dict[str, int]] = {}

  need_x = bool(NEEDS_FEATURES & (cost_models | chronic_models))
  scores = {}
  if NEEDS_HCC & (cost_models | chronic_models):
    with timer("cms_hcc_scoring"):
      scores = {s: hcc_lib.score(d, progress) for s, d in data.items()}
    for s, sc in scores.items():
      if sc.notes:
        notes[f"cms_hcc:{s}"] = sc.notes
  x = {}
  if need_x:
    with timer("features"):
      fs = features.FeatureSet.fit(train, vocab.kinds, vocab.tokens, scores[conventions.TRAIN].hccs,
                                   max_tokens=max_tokens, cost_value=vocab.cost_value)
      for s, d in data.items():
        x[s], names = fs.transform(d, scores[s].risk_score, scores[s].hccs)
    logging.info("baselines: %d features (%d frequent codes, %d HCCs)", len(names),
                 fs.token_ids.size, len(fs.hcc_names))

  def meta(description: str, kind: str = "baseline") -> dict:
    return {"kind": kind, "data_dir": data_dir, "split": split, "num_params": None,
            "description": description}

  inputs = Inputs(train=train, tuning=tuning, test=test,
                  risk={s: sc.risk_score for s, sc in scores.items()}, x=x, split=split,
                  seed=seed, num_threads=num_threads, progress=progress)
  files, headline, refused = [], {}, {}

  def fit(name: str, fit_predict: Callable[[Inputs], Any], check: Callable[[str], None]):
    """The baseline's prediction, or None (with the reason in `refused`) on degenerate data."""
    try:
      with timer(name):
        pred = fit_predict(inputs)   # refuses degenerate training data first
      check(name)
      return pred
    except features.DegenerateDataError as e:
      refused[name] = str(e)
      logging.warning("baseline %s refused: %s", name, e)
      return None

  def check_cost(name: str) -> None:
    cost_lib.check_targets(name, test, f"{split} (evaluated)")

  def check_chronic(name: str) -> None:
    chronic_lib.check_labels(name, test, f"{split} (evaluated)")

  for name, fit_predict in COST_BASELINES.items():
    if name not in cost_models:
      continue
    pred = fit(name, fit_predict, check_cost)
    if pred is None:
      continue
    files.append(preds_io.write_cost_predictions(
        workdir, name, test.subject_id, test.cost_next, pred.y_pred,
        y_pred_capped=pred.y_pred_capped, meta=meta(pred.description)))
    headline[name] = {"nmae": metrics.cost_metrics(test.cost_next, pred.y_pred)["nmae"]}

  for name, fit_predict in CHRONIC_BASELINES.items():
    if name not in chronic_models:
      continue
    pred = fit(name, fit_predict, check_chronic)
    if pred is None:
      continue
    if pred.notes:
      notes[name] = pred.notes
    files.append(preds_io.write_chronic_predictions(
        workdir, name, test.subject_id, test.cond_next, pred.y_pred, test.cond_prior,
        meta=meta(pred.description)))
    headline[name] = {
        "macro_auroc": metrics.chronic_metrics(test.cond_next, pred.y_pred)["macro_auroc"]}

  path = oracle_lib.oracle_path(data_dir) if with_oracle else None
  if with_oracle and path is None:
    notes["oracle"] = {"no ground_truth/oracle.parquet in the MEDS dataset: no oracle rows": 1}
  if path is not None:
    with timer(ORACLE):
      o = oracle_lib.load(path, test)
    if o.notes:
      notes[ORACLE] = o.notes
    r = o.rows
    description = "Expected values of the synthetic world's ground truth (not a model)."
    files.append(preds_io.write_cost_predictions(
        workdir, ORACLE, test.subject_id[r], test.cost_next[r], o.expected_cost,
        y_pred_capped=o.expected_cost_capped, meta=meta(description, "oracle")))
    files.append(preds_io.write_chronic_predictions(
        workdir, ORACLE, test.subject_id[r], test.cond_next[r], o.p_MxC, test.cond_prior[r],
        meta=meta(description, "oracle")))
    headline[ORACLE] = {
        "nmae": metrics.cost_metrics(test.cost_next[r], o.expected_cost)["nmae"],
        "macro_auroc": metrics.chronic_metrics(test.cond_next[r], o.p_MxC)["macro_auroc"]}
    median_file = oracle_lib.write_median_row(workdir, test, o, meta(
        "Conditional median cost of the synthetic world's ground truth (not a model): the NMAE "
        "limit.", "oracle"))
    if median_file is not None:
      files.append(median_file)
      median = o.median_cost
      headline[ORACLE_MEDIAN] = {"nmae": metrics.cost_metrics(test.cost_next[r], median)["nmae"]}

  for name, h in headline.items():
    logging.info("baseline %-20s %s", name, "  ".join(f"{k}={v:.4f}" for k, v in h.items()))
  for name, n in notes.items():
    logging.info("baseline notes %s: %s", name, n)
  summary = {"data_dir": data_dir, "split": split,
             "members": {s: len(d) for s, d in data.items()},
             "files": [os.path.relpath(f, workdir) for f in files], "headline": headline,
             "seconds": {k: round(v, 3) for k, v in timer.seconds.items()}, "notes": notes,
             "refused": refused}
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=1, default=lambda v: v.item() if isinstance(v, np.generic) else v)
  return summary
