"""Zero-shot cost and chronic-condition prediction by sampling 12-month futures.

For each member of the task records of a split (history strictly before the index date), N futures
are sampled until their clock reaches index + 365 days. The history's last event is some days
before the index date; a future's generated events count when they fall in the target window
[index, index + 365 d) of the clock, the same window as the targets (`lmm_jax.data.records`).

  cost of a future          = sum of vocab.cost_value over its in-window cost-bin tokens
  expected cost             = mean over the N futures (and P10/P50/P90 across them)
  P(condition c)            = share of futures with an in-window token whose codes count for c
                              (vocab.token_conditions)

Predictions go through `lmm_jax.eval.predictions` (kind 'zero-shot'), so they join the paper tables.
Accuracy against N is computed on nested subsets of one set of samples (the first n of N_max).
A future stops when its clock passes the horizon or at the token cap (sampling.max_new_tokens);
the share of futures cut by the cap is `cap_share` in the summary and a line of the curve's .md.
`max_patients` > 0 predicts a seeded uniform subsample of the split (the summary says how many of
how many).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence

from absl import logging
import numpy as np
import tqdm

from lmm_jax import conditions
from lmm_jax import conventions
from lmm_jax.data import pipeline
from lmm_jax.data import records
from lmm_jax.eval import metrics as metrics_lib
from lmm_jax.eval import predictions as pred_lib
from lmm_jax.report import plots
from lmm_jax.sampling import decode

CURVE_FILE = "zero_shot_vs_n"
SUMMARY_FILE = "zero_shot_summary.json"
CAP_SHARE_WARNING = 0.01   # futures cut by the token budget above this share: a warning


def history_of(rec: dict[str, Any], context_len: int) -> tuple[decode.History, float]:
  """(History truncated to context_len with its horizon at index+365 d, window start offset).

  Offsets are days after the history's last token (the sampler's clock origin).
  """
  tokens = np.asarray(rec["tokens"], np.int32)
  keep = pipeline.keep_indices(len(tokens), int(rec["prefix_len"]), context_len, "recent", None)
  days_abs = np.asarray(rec["days"], np.int64)[keep]
  if len(days_abs) == 0:
    raise ValueError("a task record has an empty history")
  last = float(days_abs[-1])
  index = float(rec["index_day"])
  hist = decode.History(tokens=tokens[keep], age=np.asarray(rec["age"], np.float32)[keep],
                        days=(days_abs - days_abs[0]).astype(np.float32),
                        horizon_days=index + conventions.TARGET_WINDOW_DAYS - last)
  return hist, index - last


def window_outcomes(futures: decode.Futures, window_start_R: np.ndarray, cost_value_V: np.ndarray,
                    token_conditions_VxC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(cost float64[R], condition flags uint8[R, C]) of each future's in-window tokens."""
  r, t = futures.tokens.shape
  valid_RxT = np.arange(t)[None, :] < futures.num_tokens[:, None]
  in_RxT = valid_RxT & (futures.clock >= window_start_R[:, None])
  cost_R = (cost_value_V[futures.tokens].astype(np.float64) * in_RxT).sum(axis=1)
  cond_RxC = np.zeros((r, token_conditions_VxC.shape[1]), np.uint8)
  rows, cols = np.nonzero(in_RxT)
  flags = token_conditions_VxC[futures.tokens[rows, cols]]
  np.maximum.at(cond_RxC, rows, flags)
  return cost_R, cond_RxC


def aggregate(cost_PxN: np.ndarray, cond_PxNxC: np.ndarray, n: int) -> dict[str, np.ndarray]:
  """Predictions from the first n futures of each patient."""
  c = cost_PxN[:, :n]
  return {"y_pred": c.mean(axis=1),
          "y_pred_capped": np.minimum(c, conventions.COST_CAP).mean(axis=1),
          "p10": np.quantile(c, 0.1, axis=1), "p50": np.quantile(c, 0.5, axis=1),
          "p90": np.quantile(c, 0.9, axis=1),
          "cond": cond_PxNxC[:, :n].mean(axis=1)}


def simulate(sampler: decode.Sampler, task_records: Sequence[dict[str, Any]], vocab: Any, *,
             batch_patients: int, seed: int, progress: bool = True,
             on_futures: Callable[..., None] | None = None,
             patient_index: Sequence[int] | None = None) -> dict[str, Any]:
  """Samples N futures per task record; per-patient sample outcomes and sampling statistics.

  on_futures(records, futures, window_start_R), when given, sees each batch's futures (e.g.
  `meds_outputs.FuturesWriter`). patient_index (default 0, 1, ...) seeds each record's futures:
  records given the same index get the same random keys (common random numbers)."""
  n = sampler.sc.num_samples
  num = len(task_records)
  cost_PxN = np.zeros((num, n), np.float64)
  cond_PxNxC = np.zeros((num, n, conditions.NUM_CONDITIONS), np.uint8)
  reasons = np.zeros(len(decode.STOP_REASONS), np.int64)
  gen_tokens = 0
  bar = None
  if progress:
    bar = tqdm.tqdm(total=num, desc="zero-shot futures", unit="patient")
  index = np.arange(num) if patient_index is None else np.asarray(patient_index, np.int64)
  if len(index) != num:
    raise ValueError(f"patient_index has {len(index)} entries for {num} task records")
  t0 = time.time()
  for lo in range(0, num, batch_patients):
    hi = min(lo + batch_patients, num)
    pairs = [history_of(r, sampler.context_len) for r in task_records[lo:hi]]
    futures = sampler.generate([h for h, _ in pairs], patient_index=index[lo:hi].tolist(),
                               seed=seed)
    start_R = np.repeat(np.array([s for _, s in pairs], np.float32), n)
    if on_futures is not None:
      on_futures(task_records[lo:hi], futures, start_R)
    cost_R, cond_RxC = window_outcomes(futures, start_R, vocab.cost_value, vocab.token_conditions)
    cost_PxN[lo:hi] = cost_R.reshape(hi - lo, n)
    cond_PxNxC[lo:hi] = cond_RxC.reshape(hi - lo, n, -1)
    reasons += np.bincount(futures.stop_reason, minlength=len(reasons))
    gen_tokens += int(futures.num_tokens.sum())
    if bar is not None:
      bar.update(hi - lo)
  if bar is not None:
    bar.close()
  elapsed = time.time() - t0
  total = max(int(reasons.sum()), 1)
  stats = {"patients": num, "futures_per_patient": n, "generated_tokens": gen_tokens,
           "seconds": elapsed, "tokens_per_s": gen_tokens / max(elapsed, 1e-9),
           "patients_per_s": num / max(elapsed, 1e-9),
           "stop_share": {name: float(reasons[i] / total)
                          for i, name in enumerate(decode.STOP_REASONS)}}
  return {"cost": cost_PxN, "cond": cond_PxNxC, "stats": stats}


def curve(cost_PxN: np.ndarray, cond_PxNxC: np.ndarray, y_cost: np.ndarray, y_cond: np.ndarray,
          y_prior: np.ndarray, ns: Sequence[int]) -> list[dict[str, float]]:
  """NMAE (uncapped and capped) and macro AUROC (all members, new onsets) for each N in ns."""
  rows = []
  names = conditions.CONDITION_NAMES
  for n in ns:
    agg = aggregate(cost_PxN, cond_PxNxC, n)
    cm = metrics_lib.cost_metrics(y_cost, agg["y_pred"])
    cmc = metrics_lib.cost_metrics(metrics_lib.cap(y_cost), agg["y_pred_capped"])
    ch = metrics_lib.chronic_metrics(y_cond, agg["cond"], names=names)
    new = metrics_lib.chronic_metrics(y_cond, agg["cond"], metrics_lib.new_onset_mask(y_prior),
                                      names=names)
    rows.append({"n": int(n), "nmae": cm["nmae"], "nmae_capped": cmc["nmae"], "r2": cm["r2"],
                 "macro_auroc": ch["macro_auroc"], "macro_auroc_new_onset": new["macro_auroc"]})
  return rows


def write_curve(rows: Sequence[dict[str, float]], workdir: str, title: str) -> dict[str, str]:
  """CSV, markdown and PNG of accuracy against the number of sampled futures."""
  keys = list(rows[0])
  csv_path = os.path.join(workdir, CURVE_FILE + ".csv")
  with open(csv_path, "w") as f:
    f.write(",".join(keys) + "\n")
    for r in rows:
      f.write(",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
              + "\n")
  md_path = os.path.join(workdir, CURVE_FILE + ".md")
  with open(md_path, "w") as f:
    f.write(f"# {title}\n\n| N futures | NMAE | NMAE ($250k cap) | R^2 | macro AUROC | "
            "macro AUROC (new onset) |\n|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
      f.write(f"| {r['n']} | {r['nmae']:.3f} | {r['nmae_capped']:.3f} | {r['r2']:.3f} | "
              f"{r['macro_auroc']:.3f} | {r['macro_auroc_new_onset']:.3f} |\n")
  ns = [r["n"] for r in rows]
  fig, (a1, a2) = plots.subplots(1, 2, figsize=(9, 3.6))
  a1.plot(ns, [r["nmae"] for r in rows], "o-", label="uncapped")
  a1.plot(ns, [r["nmae_capped"] for r in rows], "s--", label="$250k cap")
  a1.set(xscale="log", xlabel="sampled futures N", ylabel="NMAE (lower is better)", title="cost")
  a1.legend()
  a2.plot(ns, [r["macro_auroc"] for r in rows], "o-", label="all members")
  a2.plot(ns, [r["macro_auroc_new_onset"] for r in rows], "s--", label="new onsets")
  a2.set(xscale="log", xlabel="sampled futures N", ylabel="macro AUROC", title="chronic conditions")
  a2.legend()
  fig.suptitle(title)
  png_path = plots.save_png(fig, os.path.join(workdir, CURVE_FILE + ".png"))
  return {"csv": csv_path, "md": md_path, "png": png_path}


def run(sampler: decode.Sampler, vocab: Any, *, data_dir: str, split: str, workdir: str,
        model_name: str, num_params: int | None, description: str, curve_ns: Sequence[int],
        batch_patients: int, seed: int, max_patients: int = 0,
        progress: bool = True, on_futures: Callable[..., None] | None = None) -> dict[str, Any]:
  """Samples, writes predictions/{cost,chronic}/MODEL.parquet, the N curve and a summary."""
  recs = list(records.read_records(data_dir, records.TASK, split))
  num_in_split = len(recs)
  if 0 < max_patients < len(recs):
    # A seeded uniform subsample of the split (in record order), not its first records.
    keep = np.sort(np.random.default_rng(seed).choice(len(recs), max_patients, replace=False))
    recs = [recs[i] for i in keep]
  if not recs:
    raise ValueError(f"no task records in split {split!r} of {data_dir}")
  n_max = sampler.sc.num_samples
  ns = sorted({int(n) for n in curve_ns if 0 < int(n) <= n_max} | {n_max})
  sim = simulate(sampler, recs, vocab, batch_patients=batch_patients, seed=seed,
                 progress=progress, on_futures=on_futures)
  ids = np.array([int(r["subject_id"]) for r in recs], np.int64)
  y_cost = np.array([float(r["cost_next"]) for r in recs], np.float64)
  y_cond = np.stack([np.asarray(r["cond_next"], np.uint8) for r in recs])
  y_prior = np.stack([np.asarray(r["cond_prior"], np.uint8) for r in recs])
  agg = aggregate(sim["cost"], sim["cond"], n_max)
  meta = {"kind": "zero-shot", "data_dir": os.path.abspath(data_dir), "split": split,
          "num_params": None if num_params is None else int(num_params),
          "description": description, "num_samples": n_max}
  paths = {
      "cost": pred_lib.write_cost_predictions(
          workdir, model_name, ids, y_cost, agg["y_pred"], meta=meta,
          y_pred_capped=agg["y_pred_capped"],
          quantiles={q: agg[q] for q in pred_lib.QUANTILES}),
      "chronic": pred_lib.write_chronic_predictions(workdir, model_name, ids, y_cond,
                                                    agg["cond"], y_prior, meta=meta)}
  rows = curve(sim["cost"], sim["cond"], y_cost, y_cond, y_prior, ns)
  paths.update(write_curve(rows, workdir, f"Zero-shot accuracy vs sampled futures ({split}, "
                                          f"{len(recs)} members)"))
  cap_share = sim["stats"]["stop_share"]["budget"]
  with open(paths["md"], "a") as f:
    f.write(f"\nFutures stopped by the {sampler.sc.max_new_tokens}-token cap before reaching the "
            f"12-month horizon: {cap_share:.2%} (of {len(recs) * n_max}).\n")
  if cap_share > CAP_SHARE_WARNING:
    logging.warning("%.2f%% of the futures hit the %d-token cap before the 12-month horizon: "
                    "their cost and conditions are undercounted; raise sampling.max_new_tokens",
                    100 * cap_share, sampler.sc.max_new_tokens)
  summary = {"model": model_name, "split": split, "members": len(recs),
             "members_in_split": num_in_split, "cap_share": cap_share, "curve": rows,
             "sampling": sim["stats"], "files": paths}
  with open(os.path.join(workdir, SUMMARY_FILE), "w") as f:
    json.dump(summary, f, indent=2)
  return summary
