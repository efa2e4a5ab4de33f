"""The base of the fine-tuning tasks: a pretrained backbone plus a head over TASK records.

A fine-tuning task reads the TASK records (history strictly before the index date, targets in the
12 months after it), keeps the pretrained transformer under params['backbone'] (`init_from`
restores exactly that subtree; the head starts fresh) and puts a head on the pooled
representation (`lmm_jax.model.heads`). A subclass says what the head predicts:

  output_bias()                     the head's width and its initial biases
  _losses(out_BxO, batch)           the loss and its (sum, weight) metrics
  eval_step / finalize_eval         per-example outputs and the tuning-split metrics
  named_outputs(out_BxO)            the outputs by name, for insights
  predict_batches / calibration     what prediction reads (cost: the smearing rows)
  write_predictions(...)            the predictions file of lmm_jax.eval.predictions

Prediction itself (one pass over a split, every member once) is `lmm_jax.train.predict`.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Iterable, Iterator, Mapping

from flax import nnx
import jax
import ml_collections
import numpy as np

from lmm_jax import conventions
from lmm_jax import model as model_lib
from lmm_jax.data import pipeline
from lmm_jax.data import records
from lmm_jax.model import heads
from lmm_jax.tasks import pretrain
from lmm_jax.train.task import Metrics, Task

TASK_KEYS = ("length", "valid")

# collect(batches) -> (subject ids, per-example eval outputs): what `calibration` is given.
Collect = Callable[[Iterable[Mapping[str, np.ndarray]]], tuple[np.ndarray, dict[str, np.ndarray]]]


def train_statistics(data_dir: str, max_examples: int) -> dict[str, np.ndarray]:
  """Targets of (up to max_examples of) the train split, for output scales and initial biases
  (with "float_value" when the records carry float_value labels)."""
  cost, cost_capped, cond, float_value = [], [], [], []
  for i, rec in enumerate(records.read_records(data_dir, records.TASK, conventions.TRAIN)):
    if 0 < max_examples <= i:
      break
    cost.append(float(rec["cost_next"]))
    cost_capped.append(float(rec["cost_next_capped"]))
    cond.append(np.asarray(rec["cond_next"], np.uint8).reshape(-1))
    float_value.append(float(rec.get("float_value", -np.inf)))
  if not cost:
    raise ValueError(f"no train task records in {data_dir}")
  out = {"cost": np.asarray(cost), "cost_capped": np.asarray(cost_capped), "cond": np.stack(cond)}
  if np.isfinite(float_value).any():  # a float_value label task (lmm_jax.data.meds_tasks)
    out["float_value"] = np.asarray(float_value)
  bad = ~np.isfinite(out["cost"]) | (out["cost"] < 0)
  if bad.any():
    raise ValueError(f"{data_dir}: {int(bad.sum())} train task record(s) have a negative or "
                     "non-finite cost_next")
  return out


class FinetuneTask(Task):
  """Backbone + head over TASK records; subclasses define the head's outputs and loss."""

  backbone_key = "backbone"
  target_keys: tuple[str, ...] = ()

  def __init__(self, config: ml_collections.ConfigDict, vocab: Any | None = None,
               stats: Mapping[str, np.ndarray] | None = None):
    super().__init__(config)
    self.vocab = vocab if vocab is not None else pretrain.load_vocab(config.data_dir)
    self.stats = stats if stats is not None else train_statistics(config.data_dir,
                                                                  config.stats_examples)
    self.batch_keys = pretrain.SEQUENCE_KEYS + TASK_KEYS + self.target_keys

  # ----------------------------------------------------------------------------------------------
  # What a subclass defines.

  @abc.abstractmethod
  def output_bias(self) -> tuple[float, ...]:
    """Initial biases of the head's outputs (their number is the head's width)."""

  @abc.abstractmethod
  def _losses(self, out_BxO: jax.Array, batch: Mapping[str, jax.Array]
              ) -> tuple[jax.Array, Metrics]:
    """(mean loss, metrics) of the head's raw outputs on a batch."""

  @abc.abstractmethod
  def named_outputs(self, out_BxO: jax.Array) -> dict[str, jax.Array]:
    """The head's raw outputs as named quantities (traceable), e.g. {'cost': dollars_B}."""

  @abc.abstractmethod
  def write_predictions(self, workdir: str, subject_id: np.ndarray,
                        outputs: Mapping[str, np.ndarray], meta: dict[str, Any],
                        calibration: Mapping[str, float]) -> str:
    """Writes the predictions file of these gathered eval outputs; returns its path."""

  def calibration(self, collect: Collect, *, batch_size: int, shard_index: int,
                  shard_count: int) -> dict[str, float]:
    """Constants fit on train rows after training and applied to the predictions (none here)."""
    del collect, batch_size, shard_index, shard_count
    return {}

  def predict_batches(self, split: str, *, batch_size: int, shard_index: int,
                      shard_count: int) -> Iterator[dict[str, np.ndarray]]:
    """The batches a prediction pass over `split` evaluates."""
    return self.split_batches(split, batch_size=batch_size, shard_index=shard_index,
                              shard_count=shard_count)

  # ----------------------------------------------------------------------------------------------
  # Shared.

  def build_model(self, rngs: nnx.Rngs, vocab_multiple: int) -> nnx.Module:
    cfg = pretrain.backbone_config(self.config.model, self.vocab.size, vocab_multiple)
    self._model_cfg = cfg
    bias = self.output_bias()
    head = heads.HeadConfig(num_outputs=len(bias), hidden_dim=self.config.head.hidden_dim,
                            pooling=self.config.head.pooling,
                            dropout_rate=self.config.head.dropout_rate, output_bias=bias)
    return heads.FinetuneModel(cfg, head, rngs=rngs)

  def bucket_lengths(self) -> tuple[int, ...]:
    """config.bucket_lengths below seq_len (a preset's buckets survive a shorter seq_len)."""
    c = self.config
    return tuple(int(b) for b in c.get("bucket_lengths", ()) if 0 < int(b) < c.seq_len)

  def train_dataset(self, *, batch_size: int, shard_index: int, shard_count: int) -> Any:
    c = self.config
    return pipeline.make_dataset(
        c.data_dir, records.TASK, conventions.TRAIN, seq_len=c.seq_len, batch_size=batch_size,
        seed=c.seed, shuffle=True, num_epochs=None, pack=False, truncation=c.truncation,
        worker_count=c.worker_count, shard_index=shard_index, shard_count=shard_count,
        max_records=c.train_examples, bucket_lengths=self.bucket_lengths())

  def split_batches(self, split: str, *, batch_size: int, shard_index: int, shard_count: int,
                    max_batches: int = -1, bucketed: bool = True
                    ) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a split (every member once; padding rows have valid == 0).

    With config.bucket_lengths (and `bucketed`) the batches come in length order within windows
    and have the bucket's length, so callers key outputs by subject_id, never by position.
    bucketed=False keeps record order, so that max_batches takes the first records, not the
    shortest of a window.
    """
    it = pipeline.iterate_eval_batches(self.config.data_dir, records.TASK, split,
                                       seq_len=self.config.seq_len, batch_size=batch_size,
                                       shard_index=shard_index, shard_count=shard_count,
                                       bucket_lengths=self.bucket_lengths() if bucketed else ())
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

  def loss_fn(self, model: nnx.Module, batch: Mapping[str, jax.Array], *, train: bool,
              rng: jax.Array | None) -> tuple[jax.Array, Metrics]:
    return self._losses(self.forward(model, batch, rng if train else None), batch)

  def flops_per_token(self, num_params: int) -> float | None:
    cfg = getattr(self, "_model_cfg", None)
    if cfg is None:
      return None
    # The LM head is not run when fine-tuning.
    return model_lib.flops_per_token(
        cfg, self.config.seq_len, num_params - cfg.d_model * cfg.padded_vocab_size)
