"""The Task interface: what a training run optimizes; `trainer.train_and_evaluate` does the rest.

A task owns the model constructor, the datasets, the loss and the evaluation metrics. The trainer
owns the mesh, sharding, optimizer, jit, checkpoints, resume, logging. Pretraining
(`lmm_jax.tasks.pretrain.PretrainTask`) and the fine-tuning tasks (cost, chronic conditions)
implement this interface and share the loop.

Metric convention: `loss_fn` and `eval_step` return metrics as {name: (sum, weight)} pairs of
scalars, so microbatches, steps and eval batches aggregate exactly (sum the sums, sum the weights,
report sum / weight). The pair under 'loss' is the optimized loss (its mean is the returned loss).

Backbone/head split: parameters are a nested dict. With `backbone_key = None` every parameter is
'backbone' (pretraining). A fine-tuning model keeps its pretrained transformer under
`params[backbone_key]` (e.g. 'backbone') and its heads elsewhere; `init_from` restores only that
subtree, and the optimizer can freeze it or scale its learning rate.
"""

from __future__ import annotations

import abc
from typing import Any, Iterable, Mapping

from flax import nnx
import jax
import ml_collections
import numpy as np

Metrics = dict[str, tuple[jax.Array, jax.Array]]


class Task(abc.ABC):
  """Base class of training tasks."""

  name: str = "task"
  # Keys of the pipeline batch sent to the devices (others, e.g. subject_id, stay on the host).
  batch_keys: tuple[str, ...] = ()
  # Params subtree holding the pretrained backbone; None: the whole model is the backbone.
  backbone_key: str | None = None

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def build_model(self, rngs: nnx.Rngs, vocab_multiple: int) -> nnx.Module:
    """The model with freshly initialized parameters (called under nnx.eval_shape / jit)."""

  @abc.abstractmethod
  def train_dataset(self, *, batch_size: int, shard_index: int, shard_count: int) -> Any:
    """An infinite grain IterDataset of this process's training batches (checkpointable)."""

  def eval_dataset(self, *, batch_size: int, shard_index: int,
                   shard_count: int) -> Iterable[Mapping[str, np.ndarray]] | None:
    """One pass over the evaluation split (None: no evaluation)."""
    del batch_size, shard_index, shard_count
    return None

  @abc.abstractmethod
  def loss_fn(self, model: nnx.Module, batch: Mapping[str, jax.Array], *, train: bool,
              rng: jax.Array | None) -> tuple[jax.Array, Metrics]:
    """(mean loss, metrics as (sum, weight) pairs including 'loss')."""

  def eval_step(self, model: nnx.Module, batch: Mapping[str, jax.Array]
                ) -> tuple[Metrics, dict[str, jax.Array]]:
    """(metrics as (sum, weight) pairs, per-example outputs gathered for `finalize_eval`)."""
    _, metrics = self.loss_fn(model, batch, train=False, rng=None)
    return metrics, {}

  def finalize_eval(self, metrics: dict[str, float], outputs: dict[str, np.ndarray]
                    ) -> dict[str, float]:
    """Final eval metrics from the aggregated means and the concatenated per-example outputs."""
    del outputs
    return metrics

  def param_labels(self, params: Any) -> Any:
    """A tree like params of 'backbone' / 'head' labels."""
    if self.backbone_key is None:
      return jax.tree.map(lambda _: "backbone", params)
    return {k: jax.tree.map(lambda _, k=k: "backbone" if k == self.backbone_key else "head", v)
            for k, v in params.items()}

  def tokens_in_batch(self, batch: Mapping[str, np.ndarray]) -> int:
    """Non-padding tokens of a host batch (for tokens/s)."""
    return int(np.count_nonzero(batch["segment_ids"]))

  def flops_per_token(self, num_params: int) -> float | None:
    """Training FLOPs per token for the MFU estimate (None: not reported)."""
    del num_params
    return None

  def describe(self) -> str:
    return self.name
