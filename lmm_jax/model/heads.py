"""Fine-tuning models: a pretrained backbone (params['backbone']) plus a prediction head.

    model = FinetuneModel(backbone_cfg, HeadConfig(num_outputs=..., pooling="last"), rngs=rngs)
    out_BxO = model(tokens, segment_ids, positions, age, days, length)
    out_BxO = model.from_embeddings(model.backbone.embed(tokens, age, days), segment_ids,
                                    positions, length)            # the same; for attribution

The backbone is the registered variant of backbone_cfg (`lmm_jax.model.registry`, e.g. a
`TransformerConfig`). The patient representation is the backbone's final hidden state at the last real history token
(`length - 1`, the token just before the index date) or, with pooling='mean', the mean over the
history's tokens. A small MLP head (optional hidden layer) maps it to `num_outputs` raw outputs;
the task gives them meaning (log-mean cost, quantiles, condition logits). Output biases start at
`output_bias` (e.g. the log of the train mean, the logit of the prevalence) so step 0 already
predicts the base rate instead of spending the first steps finding it.

Dimension letters: B batch, L length, D model width, F head hidden width, O outputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from lmm_jax.model import registry

POOLINGS = ("last", "mean")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  num_outputs: int
  hidden_dim: int = 0              # 0: a linear head on the pooled representation
  pooling: str = "last"            # 'last' real token, or 'mean' over the history
  dropout_rate: float = 0.0
  output_bias: tuple[float, ...] = ()   # initial output biases (default zeros)

  def __post_init__(self):
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling={self.pooling!r}: expected one of {POOLINGS}")
    if self.output_bias and len(self.output_bias) != self.num_outputs:
      raise ValueError(f"output_bias has {len(self.output_bias)} values for "
                       f"{self.num_outputs} outputs")


def pool(h_BxLxD: jax.Array, segment_ids_BxL: jax.Array, length_B: jax.Array,
         pooling: str) -> jax.Array:
  """float32[B,D]: the hidden state at position length-1, or the mean over real tokens."""
  h = h_BxLxD.astype(jnp.float32)
  if pooling == "last":
    # Empty (padding) rows have length 0: read position 0, the caller masks them out.
    idx_B = jnp.maximum(length_B.astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(h, idx_B[:, None, None], axis=1)[:, 0, :]
  if pooling == "mean":
    m_BxL = (segment_ids_BxL > 0).astype(jnp.float32)
    return (h * m_BxL[..., None]).sum(axis=1) / jnp.maximum(m_BxL.sum(axis=1), 1.0)[:, None]
  raise ValueError(f"pooling={pooling!r}: expected one of {POOLINGS}")


class Head(nnx.Module):
  """Pooled representation -> [hidden layer ->] outputs."""

  def __init__(self, d_model: int, cfg: HeadConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    init = nnx.initializers.normal(stddev=0.02)
    width = d_model
    if cfg.hidden_dim:
      self.hidden = nnx.Param(nnx.with_partitioning(init, ("embed", "mlp"), eager_sharding=False)(
          rngs.params(), (d_model, cfg.hidden_dim), jnp.float32))
      self.hidden_bias = nnx.Param(jnp.zeros((cfg.hidden_dim,), jnp.float32))
      width = cfg.hidden_dim
    self.out = nnx.Param(nnx.with_partitioning(init, (None, None), eager_sharding=False)(
        rngs.params(), (width, cfg.num_outputs), jnp.float32))
    bias = np.asarray(cfg.output_bias or np.zeros(cfg.num_outputs), np.float32)
    self.out_bias = nnx.Param(jnp.asarray(bias))
    # The key comes at call time: the model state stays nnx.Param only (see transformer.py).
    self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=None)

  def __call__(self, x_BxD: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    x = x_BxD.astype(jnp.float32)
    if self.cfg.hidden_dim:
      x = jax.nn.gelu(x @ self.hidden[...] + self.hidden_bias[...][None, :])
    x = self.dropout(x, deterministic=dropout_rng is None, rngs=dropout_rng)
    return x @ self.out[...] + self.out_bias[...][None, :]


class FinetuneModel(nnx.Module):
  """A backbone (same structure as pretraining's) with a head on its pooled output."""

  def __init__(self, backbone_cfg: Any, head_cfg: HeadConfig, *, rngs: nnx.Rngs):
    self.backbone = registry.build(backbone_cfg, rngs)
    self.head = Head(backbone_cfg.d_model, head_cfg, rngs=rngs)
    self.head_cfg = head_cfg

  def _pooled(self, x_BxLxD: jax.Array, segment_ids_BxL: jax.Array, positions_BxL: jax.Array,
              length_B: jax.Array, dropout_rng: jax.Array | None) -> jax.Array:
    if self.head_cfg.pooling == "last":
      # The backbone computes the last block at the pooled slot alone (its other L - 1 queries
      # would be discarded): about a quarter less work at 4 layers.
      idx_B = jnp.maximum(length_B.astype(jnp.int32) - 1, 0)
      h_Bx1xD = self.backbone(None, segment_ids_BxL, positions_BxL, embeddings_BxLxD=x_BxLxD,
                              dropout_rng=dropout_rng, return_logits=False, at_B=idx_B).hidden
      return h_Bx1xD[:, 0, :].astype(jnp.float32)
    h_BxLxD = self.backbone(None, segment_ids_BxL, positions_BxL, embeddings_BxLxD=x_BxLxD,
                            dropout_rng=dropout_rng, return_logits=False).hidden
    return pool(h_BxLxD, segment_ids_BxL, length_B, self.head_cfg.pooling)

  def represent(self, tokens_BxL: jax.Array, segment_ids_BxL: jax.Array,
                positions_BxL: jax.Array, age_BxL: jax.Array | None, days_BxL: jax.Array | None,
                length_B: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
    """float32[B,D]: the pooled patient representation."""
    x_BxLxD = self.backbone.embed(tokens_BxL, age_BxL, days_BxL)
    return self._pooled(x_BxLxD, segment_ids_BxL, positions_BxL, length_B, dropout_rng)

  def from_embeddings(self, x_BxLxD: jax.Array, segment_ids_BxL: jax.Array,
                      positions_BxL: jax.Array, length_B: jax.Array, *,
                      dropout_rng: jax.Array | None = None) -> jax.Array:
    """float32[B,O] raw head outputs from the backbone's input embeddings (`backbone.embed`)."""
    rng_b = rng_h = None
    if dropout_rng is not None:
      rng_b, rng_h = jax.random.split(dropout_rng)
    x_BxD = self._pooled(x_BxLxD, segment_ids_BxL, positions_BxL, length_B, rng_b)
    return self.head(x_BxD, dropout_rng=rng_h)

  def __call__(self, tokens_BxL: jax.Array, segment_ids_BxL: jax.Array, positions_BxL: jax.Array,
               age_BxL: jax.Array | None, days_BxL: jax.Array | None, length_B: jax.Array, *,
               dropout_rng: jax.Array | None = None) -> jax.Array:
    """float32[B,O] raw head outputs."""
    x_BxLxD = self.backbone.embed(tokens_BxL, age_BxL, days_BxL)
    return self.from_embeddings(x_BxLxD, segment_ids_BxL, positions_BxL, length_B,
                                dropout_rng=dropout_rng)
