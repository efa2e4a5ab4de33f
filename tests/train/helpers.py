"""Random packed batches and a pretraining task over them, for tests that need no dataset."""

from __future__ import annotations

from typing import Any

from flax import nnx
import jax.numpy as jnp
import numpy as np

from experiments.configs import pretrain as pretrain_config
from lmm_jax.conventions import TokenKind
from lmm_jax.model import Transformer
from lmm_jax.tasks.pretrain import PretrainTask


class FakeVocab:
  """The fields of lmm_jax.data.vocab.Vocabulary that training reads."""

  def __init__(self, size: int = 100):
    self.size = size
    self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
    kinds = np.full((size,), int(TokenKind.DIAGNOSIS), np.int8)
    kinds[:3] = TokenKind.SPECIAL
    kinds[3:10] = TokenKind.TIME
    kinds[10:20] = TokenKind.COST
    kinds[50:75] = TokenKind.PROCEDURE
    kinds[75:] = TokenKind.DRUG
    self.kinds = kinds


def random_batch(rng: np.random.Generator, batch_size: int, seq_len: int,
                 vocab_size: int, max_segments: int = 3) -> dict[str, np.ndarray]:
  """A packed batch: rows of 1..max_segments segments, then padding."""
  tokens = np.zeros((batch_size, seq_len), np.int32)
  seg = np.zeros((batch_size, seq_len), np.int32)
  pos = np.zeros((batch_size, seq_len), np.int32)
  age = np.zeros((batch_size, seq_len), np.float32)
  days = np.zeros((batch_size, seq_len), np.float32)
  for b in range(batch_size):
    start = 0
    for s in range(1, int(rng.integers(1, max_segments + 1)) + 1):
      n = int(rng.integers(2, max(3, seq_len // max_segments)))
      n = min(n, seq_len - start)
      if n < 2:
        break
      tokens[b, start:start + n] = np.concatenate(
          [[1], rng.integers(3, vocab_size, size=n - 1)])
      seg[b, start:start + n] = s
      pos[b, start:start + n] = np.arange(n)
      d = np.cumsum(rng.integers(0, 30, size=n)).astype(np.float32)
      days[b, start:start + n] = d
      age[b, start:start + n] = rng.uniform(20, 80) + d / 365.25
      start += n
  return {"tokens": tokens, "segment_ids": seg, "positions": pos, "age": age, "days": days}


class RandomBatches:
  """An infinite, checkpointable iterator (get_state/set_state) of random packed batches."""

  def __init__(self, seed: int, batch_size: int, seq_len: int, vocab_size: int):
    self.seed, self.batch_size = seed, batch_size
    self.seq_len, self.vocab_size = seq_len, vocab_size
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.index])
    self.index += 1
    return random_batch(rng, self.batch_size, self.seq_len, self.vocab_size)

  def get_state(self) -> dict[str, Any]:
    return {"index": self.index}

  def set_state(self, state: dict[str, Any]) -> None:
    self.index = int(state["index"])


class RandomPretrainTask(PretrainTask):
  """PretrainTask over random batches (a fixed vocabulary of 100 tokens)."""

  def __init__(self, config, vocab_size: int = 100):
    super().__init__(config, vocab=FakeVocab(vocab_size))

  def train_dataset(self, *, batch_size: int, shard_index: int, shard_count: int):
    return RandomBatches(self.config.seed + 1000 * shard_index, batch_size, self.config.seq_len,
                         self.vocab.size)

  def eval_dataset(self, *, batch_size: int, shard_index: int, shard_count: int):
    it = RandomBatches(12345 + shard_index, batch_size, self.config.seq_len, self.vocab.size)
    return (next(it) for _ in range(2))


def tiny_config(**overrides):
  """The real `tiny` preset, with test overrides (unknown keys still fail)."""
  c = pretrain_config.get_config("tiny")
  c.progress = False
  c.update_from_flattened_dict(overrides)  # dotted keys; unknown ones fail (locked)
  return c


class _Head(nnx.Module):

  def __init__(self, d_model: int, rngs: nnx.Rngs):
    self.w = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(0.1), ("embed", None),
                                             eager_sharding=False)(rngs.params(), (d_model, 1)))


class _RegressionModel(nnx.Module):

  def __init__(self, cfg, rngs: nnx.Rngs):
    self.backbone = Transformer(cfg, rngs=rngs)
    self.head = _Head(cfg.d_model, rngs)


class RegressionTask(RandomPretrainTask):
  """A fine-tuning-shaped task: a head on the mean hidden state regresses the mean age / 100."""

  name = "regression"
  backbone_key = "backbone"

  def build_model(self, rngs: nnx.Rngs, vocab_multiple: int) -> nnx.Module:
    return _RegressionModel(self.model_config(vocab_multiple), rngs)

  def loss_fn(self, model, batch, *, train, rng):
    del train, rng
    h_BxLxD = model.backbone(batch["tokens"], batch["segment_ids"], batch["positions"],
                             batch["age"], batch["days"], return_logits=False).hidden
    w_BxL = (batch["segment_ids"] > 0).astype(jnp.float32)
    n_B = jnp.maximum(w_BxL.sum(axis=1), 1.0)
    pooled_BxD = (h_BxLxD * w_BxL[..., None]).sum(axis=1) / n_B[:, None]
    pred_B = (pooled_BxD @ model.head.w[...])[:, 0]
    target_B = (batch["age"] * w_BxL).sum(axis=1) / n_B / 100.0
    err_sum = jnp.sum((pred_B - target_B) ** 2)
    return err_sum / pred_B.shape[0], {"loss": (err_sum, jnp.float32(pred_B.shape[0]))}
