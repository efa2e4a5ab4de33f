"""Fine-tuning tasks: next-year cost and chronic-condition onset from a patient's history.

    task = make_task(config)                       # CostTask or ChronicTask (config.task)
    metrics = run(config, workdir)                 # train_and_evaluate + held-out predictions

Both tasks read the TASK records (history strictly before the index date, targets in the 12
months after it), put the pretrained transformer under params['backbone'] (`init_from` restores
exactly that subtree; the heads start fresh) and a head on the pooled representation
(`lmm_jax.model.heads`). They run in the shared trainer (`lmm_jax.train.trainer`): same sharding,
checkpoints, resume, metrics. After training, `predict_and_write` loads the final checkpoint,
predicts every member of config.predict_split exactly once and writes the predictions files of
`lmm_jax.eval.predictions` under the workdir.

Cost losses (config.cost.loss), all on the cost divided by the train mean (`scale`):
  tweedie      Tweedie negative log-likelihood, power p (1 < p < 2), log link: mu = exp(eta);
               -y mu^(1-p) / (1-p) + mu^(2-p) / (2-p)
  poisson      Poisson negative log-likelihood, log link: mu - y log(mu)
  huber_log1p  Huber on z = log1p(cost); dollars = smearing * exp(zhat) - 1, where Duan's smearing
               factor mean(exp(z - zhat)) is estimated on train members (so the mean prediction is
               unbiased on train, not just the geometric mean)
  mse          squared error on cost / scale with a softplus output (positive)
Optional outputs: the $250k-capped target (same loss on the capped cost) and P10/P50/P90 quantiles
of log1p(cost) by pinball loss (monotone by construction; dollars = expm1, quantiles commute with
monotone maps).

Chronic: one logit per condition of lmm_jax.conditions, binary cross-entropy over all members;
evaluated on all members and on new onsets only (condition not coded before the index date), since
copied-forward codes otherwise inflate AUROC.
"""

from __future__ import annotations

import abc
import math
import os
from typing import Any, Iterable, Iterator, Mapping

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmm_jax import conditions
from lmm_jax import conventions
from lmm_jax import sharding
from lmm_jax.data import records
from lmm_jax.eval import metrics as eval_metrics
from lmm_jax.eval import predictions as predictions_lib
from lmm_jax.model import heads
from lmm_jax.tasks import pretrain
from lmm_jax.train import checkpoint as ckpt_lib
from lmm_jax.train.task import Metrics, Task

COST, CHRONIC = "cost", "chronic"
COST_LOSSES = ("tweedie", "poisson", "huber_log1p", "mse")
POINT_ESTIMATES = ("mean", "p50")   # what y_pred is: the mean output or the P50 quantile
QUANTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))
TASK_KEYS = ("length", "valid")
CALIB = "calib"   # 1 on the train rows fed through evaluation to estimate the smearing factor


# ------------------------------------------------------------------------------------------------
# Losses (per example, pure).


def tweedie_nll(eta_B: jax.Array, y_B: jax.Array, power: float) -> jax.Array:
  """Tweedie negative log-likelihood of y under mean exp(eta), up to terms free of the mean."""
  if not 1.0 < power < 2.0:
    raise ValueError(f"tweedie power {power} must be in (1, 2)")
  return (-y_B * jnp.exp((1.0 - power) * eta_B) / (1.0 - power)
          + jnp.exp((2.0 - power) * eta_B) / (2.0 - power))


def poisson_nll(eta_B: jax.Array, y_B: jax.Array) -> jax.Array:
  """Poisson negative log-likelihood of y under mean exp(eta), up to terms free of the mean."""
  return jnp.exp(eta_B) - y_B * eta_B


def huber(r_B: jax.Array, delta: float) -> jax.Array:
  a = jnp.abs(r_B)
  return jnp.where(a <= delta, 0.5 * r_B * r_B, delta * (a - 0.5 * delta))


def pinball(y_B: jax.Array, q_B: jax.Array, tau: float) -> jax.Array:
  """Quantile (pinball) loss of the tau-quantile prediction q."""
  r = y_B - q_B
  return jnp.maximum(tau * r, (tau - 1.0) * r)


def _inv_softplus(x: float) -> float:
  return float(x + math.log(-math.expm1(-x)))


# ------------------------------------------------------------------------------------------------
# Shared machinery.


def _add_calib(batch: dict[str, np.ndarray], value: int = 0) -> dict[str, np.ndarray]:
  out = dict(batch)
  out[CALIB] = np.full(batch["valid"].shape, value, np.int32)
  return out


def train_statistics(data_dir: str, max_examples: int) -> dict[str, np.ndarray]:
  """Targets of (up to max_examples of) the train split, for output scales and initial biases."""
  cost, cost_capped, cond = [], [], []
  for i, rec in enumerate(records.read_records(data_dir, records.TASK, conventions.TRAIN)):
    if 0 < max_examples <= i:
      break
    cost.append(float(rec["cost_next"]))
    cost_capped.append(float(rec["cost_next_capped"]))
    cond.append(np.asarray(rec["cond_next"], np.uint8).reshape(conditions.NUM_CONDITIONS))
  if not cost:
    raise ValueError(f"no train task records in {data_dir}")
  out = {"cost": np.asarray(cost), "cost_capped": np.asarray(cost_capped), "cond": np.stack(cond)}
  bad = ~np.isfinite(out["cost"]) | (out["cost"] < 0)
  if bad.any():
    raise ValueError(f"{data_dir}: {int(bad.sum())} train task record(s) have a negative or "
                     "non-finite cost_next")
  return out


class FinetuneTask(Task):
  """Base of the cost and chronic tasks: backbone + head over TASK records."""

  backbone_key = "backbone"
  target_keys: tuple[str, ...] = ()

  def __init__(self, config: ml_collections.ConfigDict, vocab: Any | None = None,
               stats: Mapping[str, np.ndarray] | None = None):
    super().__init__(config)
    self.vocab = vocab if vocab is not None else pretrain.load_vocab(config.data_dir)
    self.stats = stats if stats is not None else train_statistics(config.data_dir,
                                                                  config.stats_examples)
    self.batch_keys = pretrain.SEQUENCE_KEYS + TASK_KEYS + self.target_keys

  @abc.abstractmethod
  def output_bias(self) -> tuple[float, ...]:
    """Initial biases of the head's outputs (their number is the head's width)."""

  def build_model(self, rngs: nnx.Rngs, vocab_multiple: int) -> nnx.Module:
    cfg = pretrain.transformer_config(self.config.model, self.vocab.size, vocab_multiple)
    self._model_cfg = cfg
    bias = self.output_bias()
    head = heads.HeadConfig(num_outputs=len(bias), hidden_dim=self.config.head.hidden_dim,
                            pooling=self.config.head.pooling,
                            dropout_rate=self.config.head.dropout_rate, output_bias=bias)
    return heads.FinetuneModel(cfg, head, rngs=rngs)

  def train_dataset(self, *, batch_size: int, shard_index: int, shard_count: int) -> Any:
    from lmm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    c = self.config
    return pipeline.make_dataset(
        c.data_dir, records.TASK, conventions.TRAIN, seq_len=c.seq_len, batch_size=batch_size,
        seed=c.seed, shuffle=True, num_epochs=None, pack=False, truncation=c.truncation,
        worker_count=c.worker_count, shard_index=shard_index, shard_count=shard_count)

  def split_batches(self, split: str, *, batch_size: int, shard_index: int, shard_count: int,
                    max_batches: int = -1) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over a split (every member once; padding rows have valid == 0)."""
    from lmm_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    it = pipeline.iterate_eval_batches(self.config.data_dir, records.TASK, split,
                                       seq_len=self.config.seq_len, batch_size=batch_size,
                                       shard_index=shard_index, shard_count=shard_count)
    for i, batch in enumerate(it):
      if 0 <= max_batches <= i:
        break
      yield batch

  def eval_dataset(self, *, batch_size: int, shard_index: int,
                   shard_count: int) -> Iterable[Mapping[str, np.ndarray]]:
    return self.split_batches(self.config.eval_split, batch_size=batch_size,
                              shard_index=shard_index, shard_count=shard_count)

  def forward(self, model: nnx.Module, batch: Mapping[str, jax.Array],
              rng: jax.Array | None) -> jax.Array:
    return model(batch["tokens"], batch["segment_ids"], batch["positions"], batch.get("age"),
                 batch.get("days"), batch["length"], dropout_rng=rng)

  @abc.abstractmethod
  def _losses(self, out_BxO: jax.Array, batch: Mapping[str, jax.Array]
              ) -> tuple[jax.Array, Metrics]:
    """(mean loss, metrics) of the head's raw outputs on a batch."""

  def loss_fn(self, model: nnx.Module, batch: Mapping[str, jax.Array], *, train: bool,
              rng: jax.Array | None) -> tuple[jax.Array, Metrics]:
    return self._losses(self.forward(model, batch, rng if train else None), batch)

  def flops_per_token(self, num_params: int) -> float | None:
    cfg = getattr(self, "_model_cfg", None)
    if cfg is None:
      return None
    # The LM head is not run when fine-tuning.
    return pretrain.model_lib.flops_per_token(
        cfg, self.config.seq_len, num_params - cfg.d_model * cfg.padded_vocab_size)

  @abc.abstractmethod
  def write_predictions(self, workdir: str, subject_id: np.ndarray,
                        outputs: Mapping[str, np.ndarray], meta: dict[str, Any],
                        smearing: Mapping[str, float] | None = None) -> str:
    """Writes the predictions file of these gathered eval outputs; returns its path."""


# ------------------------------------------------------------------------------------------------
# Cost.


class CostTask(FinetuneTask):
  """Total allowed cost in the 12 months after the index date, in dollars."""

  name = "finetune_cost"
  target_keys = ("cost_next", "cost_next_capped")

  def __init__(self, config: ml_collections.ConfigDict, vocab: Any | None = None,
               stats: Mapping[str, np.ndarray] | None = None):
    super().__init__(config, vocab, stats)
    cc = config.cost
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
    y, yc = self.stats["cost"], self.stats["cost_capped"]
    self.scale = float(cc.scale) if cc.scale > 0 else max(float(y.mean()), 1.0)
    self.scale_capped = float(cc.scale) if cc.scale > 0 else max(float(yc.mean()), 1.0)
    self.z_mean = float(np.log1p(y).mean())
    self.zc_mean = float(np.log1p(yc).mean())
    self.zq = {name: float(np.quantile(np.log1p(y), tau)) for name, tau in QUANTILES}
    # Output columns.
    names = ["mean"] + (["capped"] if cc.capped_output else []) + (
        ["q50", "q_low", "q_high"] if cc.quantiles else [])
    self.col = {n: i for i, n in enumerate(names)}

  def describe(self) -> str:
    c = self.config.cost
    return (f"cost fine-tuning on {self.config.data_dir}: loss {c.loss}, scale ${self.scale:,.0f} "
            f"(train mean), capped output {c.capped_output}, quantiles {c.quantiles}")

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
    return _chain(calib, (_add_calib(b, 0) for b in tuning))

  def calibration_batches(self, *, batch_size: int, shard_index: int, shard_count: int
                          ) -> Iterator[dict[str, np.ndarray]]:
    n = self.config.cost.calibration_examples
    max_batches = -1 if n <= 0 else max(1, math.ceil(n / (batch_size * shard_count)))
    return self.split_batches(conventions.TRAIN, batch_size=batch_size, shard_index=shard_index,
                              shard_count=shard_count, max_batches=max_batches)

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
    y_B = batch["cost_next"].astype(jnp.float32)
    per_B = self._mean_loss(out_BxO[:, self.col["mean"]], y_B, self.scale, self.z_mean)
    metrics: Metrics = {"loss/mean": ((per_B * valid_B).sum(), n)}
    if "capped" in self.col:
      yc_B = batch["cost_next_capped"].astype(jnp.float32)
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
    outputs = {"valid": batch["valid"], "y": batch["cost_next"],
               "y_capped": batch["cost_next_capped"],
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

  def write_predictions(self, workdir: str, subject_id: np.ndarray,
                        outputs: Mapping[str, np.ndarray], meta: dict[str, Any],
                        smearing: Mapping[str, float] | None = None) -> str:
    preds = self.dollars(outputs, smearing or {})
    quantiles = {q: preds["y_" + q] for q, _ in QUANTILES if "y_" + q in preds}
    meta = dict(meta, loss=self.loss_name, scale=self.scale, smearing=dict(smearing or {}),
                point_estimate=self.config.cost.point_estimate)
    return predictions_lib.write_cost_predictions(
        workdir, self.config.model_name, subject_id, outputs["y"], preds["y_pred"], meta=meta,
        y_pred_capped=preds.get("y_pred_capped"), quantiles=quantiles or None)


def _chain(*iterables: Iterable[Any]) -> Iterator[Any]:
  for it in iterables:
    yield from it


# ------------------------------------------------------------------------------------------------
# Chronic conditions.


class ChronicTask(FinetuneTask):
  """Multi-label: which of the chronic conditions are coded in the 12 months after the index."""

  name = "finetune_chronic"
  target_keys = ("cond_next", "cond_prior")

  def describe(self) -> str:
    return (f"chronic-condition fine-tuning on {self.config.data_dir}: "
            f"{conditions.NUM_CONDITIONS} conditions, binary cross-entropy")

  def output_bias(self) -> tuple[float, ...]:
    # Logit of the (smoothed) train prevalence of each condition.
    cond = self.stats["cond"].astype(np.float64)
    p = (cond.sum(axis=0) + 0.5) / (cond.shape[0] + 1.0)
    return tuple(float(x) for x in np.log(p / (1.0 - p)))

  def _losses(self, logits_BxC: jax.Array, batch: Mapping[str, jax.Array]
              ) -> tuple[jax.Array, Metrics]:
    valid_B = (batch["valid"] > 0).astype(jnp.float32)
    y_BxC = batch["cond_next"].astype(jnp.float32)
    # Numerically stable BCE with logits: softplus(x) - y x.
    bce_BxC = jax.nn.softplus(logits_BxC) - y_BxC * logits_BxC
    w_BxC = jnp.broadcast_to(valid_B[:, None], bce_BxC.shape)
    loss_sum = (bce_BxC * w_BxC).sum()
    n = w_BxC.sum()
    new_BxC = w_BxC * (batch["cond_prior"] == 0)
    metrics: Metrics = {"loss": (loss_sum, n),
                        "loss/new_onset": ((bce_BxC * new_BxC).sum(), new_BxC.sum())}
    return loss_sum / jnp.maximum(n, 1.0), metrics

  def eval_step(self, model: nnx.Module, batch: Mapping[str, jax.Array]
                ) -> tuple[Metrics, dict[str, jax.Array]]:
    logits_BxC = self.forward(model, batch, None)
    _, metrics = self._losses(logits_BxC, batch)
    return metrics, {"valid": batch["valid"], "prob": jax.nn.sigmoid(logits_BxC),
                     "cond_next": batch["cond_next"], "cond_prior": batch["cond_prior"]}

  def finalize_eval(self, metrics: dict[str, float], outputs: dict[str, np.ndarray]
                    ) -> dict[str, float]:
    out = dict(metrics)
    rows = np.asarray(outputs["valid"]) > 0
    if not rows.any():
      return out
    y = np.asarray(outputs["cond_next"])[rows]
    prior = np.asarray(outputs["cond_prior"])[rows]
    p = np.clip(np.asarray(outputs["prob"], np.float64)[rows], 0.0, 1.0)
    names = conditions.CONDITION_NAMES
    allm = eval_metrics.chronic_metrics(y, p, names=names)
    new = eval_metrics.chronic_metrics(y, p, eval_metrics.new_onset_mask(prior), names=names)
    for k in ("macro_auroc", "macro_auprc", "micro_auroc", "brier", "ece"):
      out[k] = allm[k]
      out[f"{k}_new_onset"] = new[k]
    for row in allm["per_condition"]:
      out[f"auroc/{row['condition']}"] = row["auroc"]
    for row in new["per_condition"]:
      out[f"auroc_new_onset/{row['condition']}"] = row["auroc"]
    out["n"] = float(rows.sum())
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}

  def write_predictions(self, workdir: str, subject_id: np.ndarray,
                        outputs: Mapping[str, np.ndarray], meta: dict[str, Any],
                        smearing: Mapping[str, float] | None = None) -> str:
    del smearing
    p = np.clip(np.asarray(outputs["prob"], np.float64), 0.0, 1.0)
    return predictions_lib.write_chronic_predictions(
        workdir, self.config.model_name, subject_id, outputs["cond_next"], p,
        outputs["cond_prior"], meta=meta)


# ------------------------------------------------------------------------------------------------
# Configs.

# Fine-tuning overrides per pretraining preset: steps, batch, eval cadence, learning rate, warmup.
_PRESET_OVERRIDES = {
    "tiny": dict(num_train_steps=10, batch_size=8, eval_batch_size=16, eval_every_steps=0,
                 checkpoint_every_steps=10, log_every_steps=5, learning_rate=1e-3, warmup=2),
    # demo: about 0.7 epoch of the 8,000-patient default world; minutes on a 2-core CPU.
    "demo": dict(num_train_steps=150, batch_size=16, eval_batch_size=64, eval_every_steps=0,
                 checkpoint_every_steps=150, log_every_steps=10, learning_rate=1e-3, warmup=15),
    "small": dict(num_train_steps=3000, batch_size=64, eval_batch_size=128, eval_every_steps=500,
                  checkpoint_every_steps=500, log_every_steps=50, learning_rate=3e-4, warmup=200),
    "base": dict(num_train_steps=5000, batch_size=128, eval_batch_size=256, eval_every_steps=1000,
                 checkpoint_every_steps=1000, log_every_steps=50, learning_rate=1e-4, warmup=300),
    "large": dict(num_train_steps=5000, batch_size=256, eval_batch_size=256,
                  eval_every_steps=1000, checkpoint_every_steps=1000, log_every_steps=50,
                  learning_rate=5e-5, warmup=300),
}


def finetune_config(pretrain_config: ml_collections.ConfigDict, task: str
                    ) -> ml_collections.ConfigDict:
  """A fine-tuning config from a (locked) pretraining preset: same model shapes, so the
  pretraining checkpoint loads; task-specific fields under config.head / config.cost. Unlocked:
  the caller locks it after its own changes."""
  if task not in (COST, CHRONIC):
    raise ValueError(f"task={task!r}: expected {COST!r} or {CHRONIC!r}")
  c = ml_collections.ConfigDict(pretrain_config.to_dict())
  preset = c.preset
  o = _PRESET_OVERRIDES[preset]
  c.task = task
  c.model_name = "lmm_finetuned"    # predictions/TASK/MODEL_NAME.parquet
  c.predict_split = conventions.HELD_OUT
  c.stats_examples = 200_000        # train members read for the output scale / initial biases
  c.num_train_steps = o["num_train_steps"]
  c.batch_size = o["batch_size"]
  c.eval_batch_size = o["eval_batch_size"]
  c.eval_every_steps = o["eval_every_steps"]
  c.checkpoint_every_steps = o["checkpoint_every_steps"]
  c.log_every_steps = o["log_every_steps"]
  c.eval_batches = -1               # the whole tuning split
  c.pack = False                    # one member per row
  c.truncation = "recent"           # long histories keep their most recent events
  c.optimizer.learning_rate = o["learning_rate"]
  c.optimizer.warmup_steps = o["warmup"]
  c.optimizer.weight_decay = 0.01
  c.optimizer.backbone_lr_multiplier = 0.5
  c.optimizer.freeze_backbone = False
  c.head = ml_collections.ConfigDict()
  c.head.pooling = "last"           # 'last' history token or 'mean' over the history
  c.head.hidden_dim = c.model.d_model   # 0: a linear head
  c.head.dropout_rate = 0.0
  if task == COST:
    c.cost = ml_collections.ConfigDict()
    c.cost.loss = "tweedie"         # one of COST_LOSSES
    c.cost.tweedie_power = 1.5
    c.cost.huber_delta = 1.0        # on log1p(dollars)
    c.cost.scale = 0.0              # dollars dividing the target; 0: the train mean
    c.cost.capped_output = True     # a second output for the $250k-capped target
    c.cost.quantiles = True         # P10/P50/P90 outputs (pinball loss on log1p cost)
    c.cost.quantile_weight = 0.5
    c.cost.point_estimate = "mean"  # y_pred: 'mean' (unbiased totals) or 'p50' (lowest MAE)
    c.cost.calibration_examples = 2048  # train members for huber_log1p's smearing factor
  return c


# ------------------------------------------------------------------------------------------------
# Running.


def make_task(config: ml_collections.ConfigDict, vocab: Any | None = None,
              stats: Mapping[str, np.ndarray] | None = None) -> FinetuneTask:
  if config.task == COST:
    return CostTask(config, vocab, stats)
  if config.task == CHRONIC:
    return ChronicTask(config, vocab, stats)
  raise ValueError(f"config.task={config.task!r}: expected {COST!r} or {CHRONIC!r}")


def _gather(x: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(x)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def collect_outputs(trainer: Any, params: Any, batches: Iterable[Mapping[str, np.ndarray]],
                    progress: bool = False, desc: str = "predict"
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """(subject ids, per-example eval outputs) over all processes' batches, padding rows dropped."""
  task = trainer.task
  fn = jax.jit(lambda p, b: task.eval_step(trainer.model(p), b)[1])
  ids, outs = [], {}
  bar = None
  if progress and jax.process_index() == 0:
    import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm.tqdm(desc=desc, unit="batch")
  for batch in batches:
    with sharding.activation_rules(trainer.mesh, trainer.rules):
      out = fn(params, trainer.device_batch(batch))
    # Subject ids stay on the host (int64); across processes they travel as two uint32 halves.
    sid = np.asarray(batch["subject_id"], np.int64)
    hi = _gather((sid >> 32).astype(np.int32))
    lo = _gather((sid & 0xFFFFFFFF).astype(np.uint32))
    ids.append((hi.astype(np.int64) << 32) | lo.astype(np.int64))
    for k, v in out.items():
      outs.setdefault(k, []).append(_gather(v) if jax.process_count() > 1 else np.asarray(v))
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  if not ids:
    raise ValueError("no batches to predict")
  out = {k: np.concatenate(v) for k, v in outs.items()}
  keep = np.asarray(out["valid"]) > 0
  return np.concatenate(ids)[keep], {k: v[keep] for k, v in out.items()}


def predict_and_write(config: ml_collections.ConfigDict, workdir: str,
                      task: FinetuneTask | None = None) -> str:
  """Loads the run's latest checkpoint, predicts config.predict_split, writes predictions."""
  from lmm_jax.train import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  task = task if task is not None else make_task(config)
  tr = trainer_lib.Trainer(config, task)
  params, step = ckpt_lib.restore_latest_params(workdir, tr.abstract_state["params"],
                                                hint="train before predicting")
  pcount, pindex = jax.process_count(), jax.process_index()
  local = max(config.eval_batch_size // pcount, 1)
  progress = config.get("progress", True)
  smear = {}
  if isinstance(task, CostTask) and task.calibrate:
    _, calib_out = collect_outputs(tr, params, (_add_calib(b, 1) for b in task.calibration_batches(
        batch_size=local, shard_index=pindex, shard_count=pcount)), progress, "calibrate")
    smear = task.smearing(calib_out, np.ones(len(calib_out["valid"]), bool))
  batches = task.split_batches(config.predict_split, batch_size=local, shard_index=pindex,
                               shard_count=pcount)
  if isinstance(task, CostTask) and task.calibrate:
    batches = (_add_calib(b, 0) for b in batches)
  ids, outputs = collect_outputs(tr, params, batches, progress, f"predict {config.predict_split}")
  meta = {"kind": "finetuned", "data_dir": os.path.abspath(config.data_dir),
          "split": config.predict_split, "num_params": int(tr.num_params), "step": int(step),
          "init_from": config.init_from or None, "preset": config.preset,
          "description": (f"{task.describe()}; transformer {config.model.num_layers}x"
                          f"{config.model.d_model}, "
                          + ("pretrained backbone" if config.init_from else "from scratch")
                          + (", frozen" if config.optimizer.freeze_backbone else ""))}
  path = ""
  if pindex == 0:
    path = task.write_predictions(workdir, ids, outputs, meta, smearing=smear)
    logging.info("wrote %d %s predictions to %s", len(ids), config.predict_split, path)
  return path


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fine-tunes (resuming when possible), evaluates on the tuning split, writes predictions."""
  from lmm_jax.train import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  task = make_task(config)
  final = trainer_lib.train_and_evaluate(config, workdir, task)
  final["predictions"] = predict_and_write(config, workdir, task)
  return final


__all__ = ["CostTask", "ChronicTask", "FinetuneTask", "make_task", "run", "predict_and_write",
           "collect_outputs", "tweedie_nll", "poisson_nll", "huber", "pinball", "train_statistics"]
