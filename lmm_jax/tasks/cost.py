"""Next-year cost: total allowed dollars in the 12 months after the index date; or, on a MEDS
label task with `float_value` labels, that value (a regression on any non-negative amount: the
capped output is then off).

Losses (config.cost.loss), all on the cost divided by the train mean (`scale`):
  tweedie      Tweedie negative log-likelihood, power p (1 < p < 2), log link: mu = exp(eta)
  poisson      Poisson negative log-likelihood, log link
  huber_log1p  Huber on z = log1p(cost); dollars = smearing * exp(zhat) - 1, where Duan's smearing
               factor mean(exp(z - zhat)) is estimated on train members after training (so the
               mean prediction is unbiased on train, not just the geometric mean)
  mse          squared error on cost / scale with a softplus output (positive)
Optional outputs: the $250k-capped target (same loss on the capped cost) and P10/P50/P90 quantiles
of log1p(cost) by pinball loss (monotone by construction; dollars = expm1, quantiles commute with
monotone maps).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Iterator, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmm_jax import conventions
from lmm_jax.data import meds_tasks
from lmm_jax.eval import meds_outputs
from lmm_jax.eval import metrics as eval_metrics
from lmm_jax.eval import predictions as predictions_lib
from lmm_jax.tasks.finetune import Collect, FinetuneTask
from lmm_jax.tasks.losses import huber, pinball, poisson_nll, tweedie_nll
from lmm_jax.tasks import registry
from lmm_jax.train.task import Metrics

COST_LOSSES = ("tweedie", "poisson", "huber_log1p", "mse")
POINT_ESTIMATES = ("mean", "p50")   # what y_pred is: the mean output or the P50 quantile
QUANTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))
CALIB = "calib"   # 1 on the train rows fed through evaluation to estimate the smearing factor


def _inv_softplus(x: float) -> float:
  return float(x + math.log(-math.expm1(-x)))


def _add_calib(batch: dict[str, np.ndarray], value: int = 0) -> dict[str, np.ndarray]:
  out = dict(batch)
  out[CALIB] = np.full(batch["valid"].shape, value, np.int32)
  return out


@registry.register("cost")
class CostTask(FinetuneTask):
  """Total allowed cost in the 12 months after the index date, in dollars."""

  name = "finetune_cost"
  predictions_task = predictions_lib.COST
  target_keys = ("cost_next", "cost_next_capped")

  def __init__(self, config: ml_collections.ConfigDict, vocab: Any | None = None,
               stats: Mapping[str, np.ndarray] | None = None):
    super().__init__(config, vocab, stats)
    cc = config.cost
    # The target: the label's float_value when the build is a float label task, else the claims
    # next-12-month cost.
    self.float_target = meds_tasks.FLOAT in self.stats
    if self.float_target:
      meds_tasks.check_float_target(config.data_dir, self.stats[meds_tasks.FLOAT])
      self.y_key = self.yc_key = meds_tasks.FLOAT
      self.batch_keys = self.batch_keys[:-len(self.target_keys)] + (meds_tasks.FLOAT,)
    else:
      meds_tasks.check_cost_target(config.data_dir, self.stats["cost"])
      self.y_key, self.yc_key = self.target_keys
    if cc.loss not in COST_LOSSES:
      raise ValueError(f"config.cost.loss={cc.loss!r}: expected one of {COST_LOSSES}")
    if cc.point_estimate not in POINT_ESTIMATES:
      raise ValueError(f"config.cost.point_estimate={cc.point_estimate!r}: expected one of "
                       f"{POINT_ESTIMATES}")
    if cc.point_estimate == "p50" and not cc.quantiles:
      raise ValueError("config.cost.point_estimate='p50' needs config.cost.quantiles=True")
    self.loss_name = cc.loss
    self.calibrate = cc.loss == "huber_log1p"
    if self.calibrate:
      self.batch_keys = self.batch_keys + (CALIB,)
    y, yc = ((self.stats[meds_tasks.FLOAT],) * 2 if self.float_target
             else (self.stats["cost"], self.stats["cost_capped"]))
    self.scale = float(cc.scale) if cc.scale > 0 else max(float(y.mean()), 1.0)
    self.scale_capped = float(cc.scale) if cc.scale > 0 else max(float(yc.mean()), 1.0)
    self.z_mean = float(np.log1p(y).mean())
    self.zc_mean = float(np.log1p(yc).mean())
    self.zq = {name: float(np.quantile(np.log1p(y), tau)) for name, tau in QUANTILES}
    # Output columns.
    capped = cc.capped_output and not self.float_target
    names = ["mean"] + (["capped"] if capped else []) + (
        ["q50", "q_low", "q_high"] if cc.quantiles else [])
    self.col = {n: i for i, n in enumerate(names)}

  def describe(self) -> str:
    c = self.config.cost
    target = "float_value labels" if self.float_target else "next-12-month cost"
    return (f"cost fine-tuning on {self.config.data_dir} ({target}): loss {c.loss}, scale "
            f"{self.scale:,.4g} (train mean), capped output {'capped' in self.col}, quantiles "
            f"{c.quantiles}")

  def output_bias(self) -> tuple[float, ...]:
    mean_bias = _inv_softplus(1.0) if self.loss_name == "mse" else 0.0
    bias = {"mean": mean_bias, "capped": mean_bias}
    if self.config.cost.quantiles:
      bias["q50"] = self.zq["p50"]
      bias["q_low"] = _inv_softplus(max(self.zq["p50"] - self.zq["p10"], 0.05))
      bias["q_high"] = _inv_softplus(max(self.zq["p90"] - self.zq["p50"], 0.05))
    return tuple(bias[n] for n in self.col)

  def train_dataset(self, *, batch_size: int, shard_index: int, shard_count: int) -> Any:
    ds = super().train_dataset(batch_size=batch_size, shard_index=shard_index,
                               shard_count=shard_count)
    return ds.map(_add_calib) if self.calibrate else ds

  def eval_dataset(self, *, batch_size: int, shard_index: int,
                   shard_count: int) -> Iterable[Mapping[str, np.ndarray]]:
    tuning = super().eval_dataset(batch_size=batch_size, shard_index=shard_index,
                                  shard_count=shard_count)
    if not self.calibrate:
      return tuning
    # Train rows first (flagged), so that config.eval_batches can only shorten the tuning pass.
    calib = (_add_calib(b, 1) for b in self.calibration_batches(
        batch_size=batch_size, shard_index=shard_index, shard_count=shard_count))
    return itertools.chain(calib, (_add_calib(b, 0) for b in tuning))

  def calibration_batches(self, *, batch_size: int, shard_index: int, shard_count: int
                          ) -> Iterator[dict[str, np.ndarray]]:
    n = self.config.cost.calibration_examples
    max_batches = -1 if n <= 0 else max(1, math.ceil(n / (batch_size * shard_count)))
    # Record order (unbucketed): the smearing rows are the first n train members, whatever their
    # history lengths.
    return self.split_batches(conventions.TRAIN, batch_size=batch_size, shard_index=shard_index,
                              shard_count=shard_count, max_batches=max_batches, bucketed=False)

  # Raw outputs -> quantities.
  def _mean_loss(self, o_B: jax.Array, y_B: jax.Array, scale: float, z_mean: float) -> jax.Array:
    c = self.config.cost
    if self.loss_name == "tweedie":
      return tweedie_nll(o_B, y_B / scale, c.tweedie_power)
    if self.loss_name == "poisson":
      return poisson_nll(o_B, y_B / scale)
    if self.loss_name == "huber_log1p":
      return huber(jnp.log1p(y_B) - (o_B + z_mean), c.huber_delta)
    return jnp.square(jax.nn.softplus(o_B) - y_B / scale)

  def _mean_prediction(self, o_B: jax.Array, scale: float, z_mean: float) -> jax.Array:
    """Dollars, except huber_log1p: log1p dollars before smearing."""
    if self.loss_name in ("tweedie", "poisson"):
      return scale * jnp.exp(jnp.minimum(o_B, 30.0))
    if self.loss_name == "huber_log1p":
      return o_B + z_mean
    return scale * jax.nn.softplus(o_B)

  def mean_prediction(self, o_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(predicted mean cost in dollars, its log) from the mean column's raw outputs.

    huber_log1p: dollars before Duan's smearing (a constant factor: it changes no ranking), and
    the log is log1p dollars.
    """
    p_B = self._mean_prediction(o_B, self.scale, self.z_mean)
    if self.loss_name == "huber_log1p":
      return jnp.expm1(jnp.clip(p_B, 0.0, 30.0)), p_B
    if self.loss_name in ("tweedie", "poisson"):
      return p_B, jnp.log(self.scale) + jnp.minimum(o_B, 30.0)
    return p_B, jnp.log(jnp.maximum(p_B, 1e-6))

  def _quantiles(self, out_BxO: jax.Array) -> dict[str, jax.Array]:
    q50 = out_BxO[:, self.col["q50"]]
    return {"p10": q50 - jax.nn.softplus(out_BxO[:, self.col["q_low"]]), "p50": q50,
            "p90": q50 + jax.nn.softplus(out_BxO[:, self.col["q_high"]])}

  def _losses(self, out_BxO: jax.Array, batch: Mapping[str, jax.Array]
              ) -> tuple[jax.Array, Metrics]:
    c = self.config.cost
    valid_B = (batch["valid"] > 0).astype(jnp.float32)
    if self.calibrate:
      valid_B = valid_B * (batch[CALIB] == 0)  # calibration rows never enter a loss
    n = valid_B.sum()
    y_B = batch[self.y_key].astype(jnp.float32)
    per_B = self._mean_loss(out_BxO[:, self.col["mean"]], y_B, self.scale, self.z_mean)
    metrics: Metrics = {"loss/mean": ((per_B * valid_B).sum(), n)}
    if "capped" in self.col:
      yc_B = batch[self.yc_key].astype(jnp.float32)
      capped_B = self._mean_loss(out_BxO[:, self.col["capped"]], yc_B, self.scale_capped,
                                 self.zc_mean)
      metrics["loss/capped"] = ((capped_B * valid_B).sum(), n)
      per_B = per_B + capped_B
    if "q50" in self.col:
      z_B = jnp.log1p(y_B)
      qs = self._quantiles(out_BxO)
      q_B = sum(pinball(z_B, qs[name], tau) for name, tau in QUANTILES)
      metrics["loss/quantile"] = ((q_B * valid_B).sum(), n)
      per_B = per_B + c.quantile_weight * q_B
    loss_sum = (per_B * valid_B).sum()
    metrics["loss"] = (loss_sum, n)
    return loss_sum / jnp.maximum(n, 1.0), metrics

  def eval_step(self, model: nnx.Module, batch: Mapping[str, jax.Array]
                ) -> tuple[Metrics, dict[str, jax.Array]]:
    out_BxO = self.forward(model, batch, None)
    _, metrics = self._losses(out_BxO, batch)
    outputs = {"valid": batch["valid"], "y": batch[self.y_key],
               "y_capped": batch[self.yc_key],
               "pred": self._mean_prediction(out_BxO[:, self.col["mean"]], self.scale,
                                             self.z_mean)}
    if "capped" in self.col:
      outputs["pred_capped"] = self._mean_prediction(out_BxO[:, self.col["capped"]],
                                                     self.scale_capped, self.zc_mean)
    if "q50" in self.col:
      outputs.update(self._quantiles(out_BxO))
    outputs[CALIB] = batch[CALIB] if self.calibrate else jnp.zeros_like(batch["valid"])
    return metrics, outputs

  def dollars(self, outputs: Mapping[str, np.ndarray], smearing: Mapping[str, float]
              ) -> dict[str, np.ndarray]:
    """Per-example dollar predictions: y_pred, optional y_pred_capped and quantiles."""
    out = {}
    for key in ("pred", "pred_capped"):
      if key not in outputs:
        continue
      p = np.asarray(outputs[key], np.float64)
      if self.calibrate:
        p = np.maximum(smearing[key] * np.exp(np.minimum(p, 30.0)) - 1.0, 0.0)
      if key == "pred_capped":
        p = np.minimum(p, conventions.COST_CAP)
      out["y_" + key] = p
    for name, _ in QUANTILES:
      if name in outputs:
        out["y_" + name] = np.maximum(np.expm1(np.minimum(
            np.asarray(outputs[name], np.float64), 30.0)), 0.0)
    if self.config.cost.point_estimate == "p50":
      # The conditional median minimizes absolute error (hence NMAE); the mean keeps totals.
      out["y_pred"] = out["y_p50"]
      out["y_pred_capped"] = np.minimum(out["y_p50"], conventions.COST_CAP)
    return out

  def smearing(self, outputs: Mapping[str, np.ndarray], rows: np.ndarray) -> dict[str, float]:
    """Duan's smearing factors mean(exp(z - zhat)) over the given (train) rows."""
    if not self.calibrate:
      return {}
    if not rows.any():
      raise ValueError("huber_log1p needs train rows to estimate the smearing factor; set "
                       "config.cost.calibration_examples > 0")
    out = {}
    for key, target in (("pred", "y"), ("pred_capped", "y_capped")):
      if key in outputs:
        z = np.log1p(np.asarray(outputs[target], np.float64)[rows])
        resid = z - np.asarray(outputs[key], np.float64)[rows]
        out[key] = float(np.mean(np.exp(np.minimum(resid, 30.0))))
    return out

  def finalize_eval(self, metrics: dict[str, float], outputs: dict[str, np.ndarray]
                    ) -> dict[str, float]:
    out = dict(metrics)
    valid = np.asarray(outputs["valid"]) > 0
    calib = np.asarray(outputs[CALIB]) > 0
    rows = valid & ~calib
    if not rows.any():
      return out
    smear = self.smearing(outputs, valid & calib)
    for key, v in smear.items():
      out[f"smearing/{key}"] = v
    preds = {k: v[rows] for k, v in self.dollars(outputs, smear).items()}
    y = np.asarray(outputs["y"], np.float64)[rows]
    raw = eval_metrics.cost_metrics(y, preds["y_pred"])
    capped_pred = preds.get("y_pred_capped", eval_metrics.cap(preds["y_pred"]))
    capped = eval_metrics.cost_metrics(eval_metrics.cap(y), capped_pred)
    for k in ("nmae", "mae", "r2", "cpm"):
      out[k] = raw[k]
      out[f"{k}_capped"] = capped[k]
    out["mean_true"], out["mean_pred"] = raw["mean_true"], raw["mean_pred"]
    out["predictive_ratio"] = raw["mean_pred"] / raw["mean_true"] if raw["mean_true"] else 0.0
    if "y_p10" in preds:
      out["coverage_p10_p90"] = float(np.mean((y >= preds["y_p10"]) & (y <= preds["y_p90"])))
      p50 = eval_metrics.cost_metrics(y, preds["y_p50"])
      out["mae_p50"], out["nmae_p50"] = p50["mae"], p50["nmae"]
    out["n"] = float(rows.sum())
    return out

  def named_outputs(self, out_BxO: jax.Array) -> dict[str, jax.Array]:
    dollars_B, log_B = self.mean_prediction(out_BxO[:, self.col["mean"]])
    return {"cost": dollars_B, "log_cost": log_B}

  def calibration(self, collect: Collect, *, batch_size: int, shard_index: int,
                  shard_count: int) -> dict[str, float]:
    """huber_log1p: Duan's smearing factors on train rows; other losses need none."""
    if not self.calibrate:
      return {}
    _, outputs = collect(_add_calib(b, 1) for b in self.calibration_batches(
        batch_size=batch_size, shard_index=shard_index, shard_count=shard_count))
    return self.smearing(outputs, np.ones(len(outputs["valid"]), bool))

  def predict_batches(self, split: str, *, batch_size: int, shard_index: int,
                      shard_count: int) -> Iterator[dict[str, np.ndarray]]:
    batches = super().predict_batches(split, batch_size=batch_size, shard_index=shard_index,
                                      shard_count=shard_count)
    return (_add_calib(b, 0) for b in batches) if self.calibrate else batches

  def write_predictions(self, workdir: str, subject_id: np.ndarray,
                        outputs: Mapping[str, np.ndarray], meta: dict[str, Any],
                        calibration: Mapping[str, float]) -> str:
    preds = self.dollars(outputs, calibration)
    quantiles = {q: preds["y_" + q] for q, _ in QUANTILES if "y_" + q in preds}
    meta = dict(meta, loss=self.loss_name, scale=self.scale, smearing=dict(calibration),
                point_estimate=self.config.cost.point_estimate, target=self.y_key)
    meds_path = meds_outputs.cost_predictions_path(workdir, self.config.model_name)
    if np.unique(subject_id).size < len(subject_id):
      # Several prediction times per subject (a label task): predictions/cost/ holds one row
      # per subject, so only the MEDS label layout (keyed by subject and prediction time).
      extra = {k: preds[f"y_{k}"] for k in ("p10", "p50", "p90") if f"y_{k}" in preds}
      return meds_outputs.write_cost_table(
          meds_path, self.config.data_dir, meta["split"], subject_id, outputs["y"],
          preds["y_pred"], extra, dict(meta, model=self.config.model_name, task="cost"))
    path = predictions_lib.write_cost_predictions(
        workdir, self.config.model_name, subject_id, outputs["y"], preds["y_pred"], meta=meta,
        y_pred_capped=preds.get("y_pred_capped"), quantiles=quantiles or None)
    # Beside it, the MEDS label layout with each row's prediction time (meds_outputs).
    meds_outputs.cost_to_meds(path, self.config.data_dir, meds_path)
    return path
