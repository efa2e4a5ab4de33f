"""Chronic conditions: which of the conditions of lmm_jax.conditions are coded in the 12 months
after the index date; one logit per condition, binary cross-entropy over all members. Evaluated on
all members and on new onsets only (condition not coded before the index date), since
copied-forward codes otherwise inflate AUROC.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from lmm_jax import conditions
from lmm_jax.eval import metrics as eval_metrics
from lmm_jax.eval import predictions as predictions_lib
from lmm_jax.tasks.finetune import FinetuneTask
from lmm_jax.tasks.losses import binary_cross_entropy
from lmm_jax.tasks import registry
from lmm_jax.train.task import Metrics


@registry.register("chronic")
class ChronicTask(FinetuneTask):
  """Multi-label: which of the chronic conditions are coded in the 12 months after the index."""

  name = "finetune_chronic"
  predictions_task = predictions_lib.CHRONIC
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
    bce_BxC = binary_cross_entropy(logits_BxC, y_BxC)
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

  def named_outputs(self, out_BxO: jax.Array) -> dict[str, jax.Array]:
    return {"chronic_logit": out_BxO, "chronic_prob": jax.nn.sigmoid(out_BxO)}

  def write_predictions(self, workdir: str, subject_id: np.ndarray,
                        outputs: Mapping[str, np.ndarray], meta: dict[str, Any],
                        calibration: Mapping[str, float]) -> str:
    del calibration
    p = np.clip(np.asarray(outputs["prob"], np.float64), 0.0, 1.0)
    return predictions_lib.write_chronic_predictions(
        workdir, self.config.model_name, subject_id, outputs["cond_next"], p,
        outputs["cond_prior"], meta=meta)
