"""Pretraining: next-token prediction over packed patient timelines.

The loss at position t predicts token t+1 of the same packed segment: targets are the tokens shifted
left within the row, weighted 0 where the next token starts another segment or is padding. The loss
(and in evaluation top-1/top-10 accuracy) is broken down by the target token's kind
(`lmm_jax.conventions.TokenKind`: diagnosis, procedure, drug, cost, time, ...).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lmm_jax import model as model_lib
from lmm_jax.model import registry as model_registry
from lmm_jax.conventions import TOKEN_KIND_NAMES
from lmm_jax.data import pipeline
from lmm_jax.data import records
from lmm_jax.data.vocab import Vocabulary
from lmm_jax.tasks import losses
from lmm_jax.tasks import registry
from lmm_jax.train.task import Metrics, Task

NUM_KINDS = len(TOKEN_KIND_NAMES)
SEQUENCE_KEYS = ("tokens", "segment_ids", "positions", "age", "days")


def load_vocab(data_dir: str) -> Vocabulary:
  if not data_dir:
    raise ValueError("config.data_dir is empty: pass --config.data_dir=<dataset builder output>")
  records.check_dataset(data_dir)  # a missing, partial or mixed build: refused, saying rebuild
  return Vocabulary.load(os.path.join(data_dir, records.VOCAB_FILE))


def backbone_config(model_cfg: ml_collections.ConfigDict, vocab_size: int,
                    vocab_multiple: int) -> Any:
  """The backbone's static config (the lmm_jax.model registry entry config.model.name names)
  from config.model and the vocabulary size padded to vocab_multiple."""
  padded = int(np.ceil(vocab_size / vocab_multiple) * vocab_multiple)
  return model_registry.make_config(model_cfg, vocab_size, padded)


def next_token_targets(tokens_BxL: jax.Array, segment_ids_BxL: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """(targets int32[B,L], weights float32[B,L]): token t+1 of the same segment, else weight 0."""
  targets_BxL = jnp.concatenate([tokens_BxL[:, 1:], jnp.zeros_like(tokens_BxL[:, :1])], axis=1)
  same_BxL1 = (segment_ids_BxL[:, 1:] == segment_ids_BxL[:, :-1]) & (segment_ids_BxL[:, :-1] != 0)
  weights_BxL = jnp.concatenate([same_BxL1, jnp.zeros_like(same_BxL1[:, :1])], axis=1)
  return targets_BxL, weights_BxL.astype(jnp.float32)


def next_token_metrics(h_BxLxD: jax.Array, w_DxV: jax.Array, bias_V: jax.Array,
                       tokens_BxL: jax.Array, segment_ids_BxL: jax.Array, kinds_V: jax.Array, *,
                       accuracy: bool, chunk: int) -> tuple[jax.Array, Metrics]:
  """Mean next-token cross-entropy of logits h @ w + bias and (sum, weight) metrics overall and by
  target kind; the projection is fused with the loss in chunks of `chunk` positions (losses.py)."""
  targets_BxL, w_BxL = next_token_targets(tokens_BxL, segment_ids_BxL)
  if accuracy:
    nll_BxL, rank_BxL = losses.next_token_nll_and_rank(h_BxLxD, w_DxV, bias_V, targets_BxL, chunk)
  else:
    nll_BxL = losses.next_token_nll(h_BxLxD, w_DxV, bias_V, targets_BxL, chunk)
  kind_w_BxLxK = jax.nn.one_hot(kinds_V[targets_BxL], NUM_KINDS) * w_BxL[..., None]
  count_K = kind_w_BxLxK.sum(axis=(0, 1))
  n = w_BxL.sum()
  loss_sum = (nll_BxL * w_BxL).sum()
  metrics: Metrics = {"loss": (loss_sum, n)}
  nll_sum_K = (nll_BxL[..., None] * kind_w_BxLxK).sum(axis=(0, 1))
  for k, name in enumerate(TOKEN_KIND_NAMES):
    metrics[f"loss/{name}"] = (nll_sum_K[k], count_K[k])
  if accuracy:  # top-k hit iff fewer than k logits beat the target
    for top in (1, 10):
      hit_BxL = (rank_BxL < top).astype(jnp.float32)
      metrics[f"acc{top}"] = ((hit_BxL * w_BxL).sum(), n)
      hit_K = (hit_BxL[..., None] * kind_w_BxLxK).sum(axis=(0, 1))
      for k, name in enumerate(TOKEN_KIND_NAMES):
        metrics[f"acc{top}/{name}"] = (hit_K[k], count_K[k])
  return loss_sum / jnp.maximum(n, 1.0), metrics


@registry.register("pretrain")
class PretrainTask(Task):
  """Next-token prediction on the TIMELINE records."""

  name = "pretrain"
  batch_keys = SEQUENCE_KEYS
  backbone_key = None

  def __init__(self, config: ml_collections.ConfigDict, vocab: Any | None = None):
    super().__init__(config)
    self.vocab = vocab if vocab is not None else load_vocab(config.data_dir)
    self.kinds = np.asarray(self.vocab.kinds, np.int32)

  def model_config(self, vocab_multiple: int) -> Any:
    return backbone_config(self.config.model, self.vocab.size, vocab_multiple)

  def build_model(self, rngs: nnx.Rngs, vocab_multiple: int) -> nnx.Module:
    cfg = self.model_config(vocab_multiple)
    self._model_cfg = cfg
    return model_registry.build(cfg, rngs)

  def train_dataset(self, *, batch_size: int, shard_index: int, shard_count: int) -> Any:
    c = self.config
    return pipeline.make_dataset(
        c.data_dir, records.TIMELINE, "train", seq_len=c.seq_len, batch_size=batch_size,
        seed=c.seed, shuffle=True, num_epochs=None, pack=c.pack, truncation=c.truncation,
        worker_count=c.worker_count, shard_index=shard_index, shard_count=shard_count,
        max_records=c.get("train_examples", 0), anchor_rate=c.get("anchor_rate", 0.0))

  def eval_dataset(self, *, batch_size: int, shard_index: int,
                   shard_count: int) -> Iterable[Mapping[str, np.ndarray]]:
    c = self.config
    return pipeline.iterate_eval_batches(c.data_dir, records.TIMELINE, c.eval_split,
                                         seq_len=c.seq_len, batch_size=batch_size,
                                         shard_index=shard_index, shard_count=shard_count)

  def _padded_kinds(self, vocab_size: int) -> jax.Array:
    kinds = np.zeros((vocab_size,), np.int32)  # padded rows: SPECIAL (never targets)
    kinds[:len(self.kinds)] = self.kinds
    return jnp.asarray(kinds)

  def loss_fn(self, model: nnx.Module, batch: Mapping[str, jax.Array], *, train: bool,
              rng: jax.Array | None) -> tuple[jax.Array, Metrics]:
    h_BxLxD = model(batch["tokens"], batch["segment_ids"], batch["positions"], batch.get("age"),
                    batch.get("days"), dropout_rng=rng if train else None,
                    return_logits=False).hidden
    w_DxV, bias_V = model.output_head()
    kinds_V = self._padded_kinds(w_DxV.shape[-1])
    return next_token_metrics(h_BxLxD, w_DxV, bias_V, batch["tokens"], batch["segment_ids"],
                              kinds_V, accuracy=not train, chunk=self.config.get("loss_chunk", 64))

  def finalize_eval(self, metrics: dict[str, float], outputs: dict[str, np.ndarray]
                    ) -> dict[str, float]:
    del outputs
    out = dict(metrics)
    if "loss" in out:
      out["perplexity"] = float(np.exp(min(out["loss"], 50.0)))
    return out

  def flops_per_token(self, num_params: int) -> float | None:
    cfg = getattr(self, "_model_cfg", None)
    if cfg is None:
      return None
    return model_lib.flops_per_token(cfg, self.config.seq_len, num_params)

  def describe(self) -> str:
    return f"pretrain on {self.config.data_dir} (vocabulary {self.vocab.size})"
