"""A binary MEDS task: the `boolean_value` of each (subject, prediction time) label, e.g. the
MEDS-DEV tasks of experiments/configs/aces/ (30-day readmission, in-hospital mortality). One
logit, binary cross-entropy; AUROC / AUPRC / Brier on the tuning split; held-out predictions in
meds-evaluation's PredictionSchema (`lmm_jax.eval.meds_outputs`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmm_jax import conventions
from lmm_jax.data import meds_tasks
from lmm_jax.data import records
from lmm_jax.eval import meds_outputs
from lmm_jax.eval import metrics as eval_metrics
from lmm_jax.tasks import registry
from lmm_jax.tasks.finetune import FinetuneTask
from lmm_jax.tasks.losses import binary_cross_entropy
from lmm_jax.train.task import Metrics


def binary_statistics(data_dir: str, max_examples: int) -> dict[str, np.ndarray]:
  """The train labels (up to max_examples); refuses records without boolean labels."""
  y = []
  for i, rec in enumerate(records.read_records(data_dir, records.TASK, conventions.TRAIN)):
    if 0 < max_examples <= i:
      break
    y.append(int(rec["boolean_value"]))
  y_N = np.asarray(y, np.int64)
  if not y_N.size or np.any(y_N == meds_tasks.NO_BOOLEAN):
    raise ValueError(
        f"config.task=binary needs a boolean label on every task record, and "
        f"{int((y_N == meds_tasks.NO_BOOLEAN).sum())} of {y_N.size} train records of {data_dir} "
        "have none: build it with a binary MEDS task (--config.task=aces "
        "--config.task_aces_config=... or --config.task=labels --config.task_labels_dir=...)")
  return {"label": y_N}


@registry.register("binary")
class BinaryTask(FinetuneTask):
  """P(boolean_value) at each prediction time."""

  name = "finetune_binary"
  target_keys = ("boolean_value",)

  def __init__(self, config: ml_collections.ConfigDict, vocab: Any | None = None,
               stats: Mapping[str, np.ndarray] | None = None):
    if stats is None:
      stats = binary_statistics(config.data_dir, config.stats_examples)
    super().__init__(config, vocab, stats)

  def describe(self) -> str:
    y = self.stats["label"]
    return (f"binary fine-tuning on {self.config.data_dir}: boolean_value, train prevalence "
            f"{y.mean():.3f} of {y.size}")

  def output_bias(self) -> tuple[float, ...]:
    y = self.stats["label"].astype(np.float64)
    p = (y.sum() + 0.5) / (y.size + 1.0)
    return (float(np.log(p / (1.0 - p))),)

  def _losses(self, out_BxO: jax.Array, batch: Mapping[str, jax.Array]
              ) -> tuple[jax.Array, Metrics]:
    valid_B = ((batch["valid"] > 0) & (batch["boolean_value"] >= 0)).astype(jnp.float32)
    y_B = jnp.maximum(batch["boolean_value"], 0).astype(jnp.float32)
    bce_B = binary_cross_entropy(out_BxO[:, 0], y_B)
    loss_sum, n = (bce_B * valid_B).sum(), valid_B.sum()
    return loss_sum / jnp.maximum(n, 1.0), {"loss": (loss_sum, n)}

  def eval_step(self, model: nnx.Module, batch: Mapping[str, jax.Array]
                ) -> tuple[Metrics, dict[str, jax.Array]]:
    out_BxO = self.forward(model, batch, None)
    _, metrics = self._losses(out_BxO, batch)
    return metrics, {"valid": batch["valid"], "prob": jax.nn.sigmoid(out_BxO[:, 0]),
                     "boolean_value": batch["boolean_value"]}

  def finalize_eval(self, metrics: dict[str, float], outputs: dict[str, np.ndarray]
                    ) -> dict[str, float]:
    out = dict(metrics)
    rows = np.asarray(outputs["valid"]) > 0
    if not rows.any():
      return out
    y = np.asarray(outputs["boolean_value"])[rows]
    p = np.clip(np.asarray(outputs["prob"], np.float64)[rows], 0.0, 1.0)
    out["n"] = float(rows.sum())
    out["prevalence"] = float(y.mean())
    out["brier"] = eval_metrics.brier(y, p)
    if 0 < y.sum() < y.size:
      out["auroc"] = eval_metrics.auroc(y, p)
      out["auprc"] = eval_metrics.auprc(y, p)
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}

  def named_outputs(self, out_BxO: jax.Array) -> dict[str, jax.Array]:
    return {"binary_logit": out_BxO[:, 0], "binary_prob": jax.nn.sigmoid(out_BxO[:, 0])}

  def write_predictions(self, workdir: str, subject_id: np.ndarray,
                        outputs: Mapping[str, np.ndarray], meta: dict[str, Any],
                        calibration: Mapping[str, float]) -> str:
    del calibration
    return meds_outputs.write_binary_predictions(
        workdir, self.config.model_name, self.config.data_dir, meta["split"], subject_id,
        outputs["boolean_value"], np.asarray(outputs["prob"], np.float64), meta)
