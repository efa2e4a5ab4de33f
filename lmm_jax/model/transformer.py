"""A decoder-only transformer over patient event tokens (Flax NNX).

Pre-norm blocks (RMSNorm -> causal self-attention -> RMSNorm -> SwiGLU MLP), rotary positions
computed from each token's position within its packed segment, and an optional additive embedding
of time: sinusoidal features of the age in years and of log1p(days since the segment's first
event), projected to the model width. Every parameter carries logical axis names
(`lmm_jax.sharding` maps them to mesh axes); compute runs in `dtype`, parameters are stored in
`param_dtype`. One `Transformer.__call__` serves training, scoring, attribution (from given input
embeddings) and KV-cache decoding (the attention reads and writes the cache); see
`lmm_jax.model.backbone` for the calling convention.

Dimension letters in tensor names: B batch, L (query) length, S (key) length, D model width,
H query heads, K key/value heads, E head width, F MLP width, V padded vocabulary, T time features.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from lmm_jax import sharding
from lmm_jax.model.backbone import ModelOutput, check_inputs

TIME_EMBEDDINGS = ("none", "age", "age_and_days")
ATTENTION_IMPLS = ("xla", "cudnn")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Static hyper-parameters of the transformer."""
  vocab_size: int            # real vocabulary size; logits of ids >= vocab_size are masked out
  padded_vocab_size: int     # embedding/logit rows (a multiple that the mesh divides)
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 4
  num_kv_heads: int = 4      # < num_heads: grouped-query attention
  head_dim: int = 16
  mlp_dim: int = 256
  time_embedding: str = "age"
  num_time_features: int = 32  # sinusoidal features per time signal (half sine, half cosine)
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  dropout_rate: float = 0.0
  tie_embeddings: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat: bool = False
  attention_impl: str = "xla"

  def __post_init__(self):
    if self.time_embedding not in TIME_EMBEDDINGS:
      raise ValueError(f"time_embedding={self.time_embedding!r}: expected one of {TIME_EMBEDDINGS}")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"attention_impl={self.attention_impl!r}: expected one of {ATTENTION_IMPLS}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    if self.padded_vocab_size < self.vocab_size:
      raise ValueError(f"padded_vocab_size={self.padded_vocab_size} < vocab_size={self.vocab_size}")
    if self.head_dim % 2 or self.num_time_features % 2:
      raise ValueError("head_dim and num_time_features must be even (rotary / sin-cos pairs)")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)


def _param(init: Any, names: tuple[str | None, ...]) -> Any:
  # eager_sharding=False: the trainer places parameters through jit out_shardings derived from
  # these names, so creating a Variable never needs a mesh.
  return nnx.with_partitioning(init, names, eager_sharding=False)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    del rngs
    self.eps = cfg.norm_eps
    self.dtype = cfg.compute_dtype
    self.scale = nnx.Param(_param(nnx.initializers.ones, ("embed",))(
        jax.random.key(0), (dim,), cfg.params_dtype))

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x = x_BxLxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    scale_11D = self.scale[...].astype(jnp.float32)[None, None, :]
    return (x * scale_11D).astype(self.dtype)


def rotary(x_BxLxNxE: jax.Array, positions_BxL: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (rotate-half form), computed in float32."""
  half = x_BxLxNxE.shape[-1] // 2
  freq_111E2 = (theta ** (-np.arange(half, dtype=np.float32) / half)).reshape(1, 1, 1, half)
  angle_BxLx1xE2 = positions_BxL.astype(jnp.float32)[:, :, None, None] * freq_111E2
  sin, cos = jnp.sin(angle_BxLx1xE2), jnp.cos(angle_BxLx1xE2)
  x = x_BxLxNxE.astype(jnp.float32)
  x1, x2 = x[..., :half], x[..., half:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxE.dtype)


def segment_mask(q_segment_ids_BxL: jax.Array, kv_segment_ids_BxS: jax.Array) -> jax.Array:
  """bool[B,1,L,S]: query and key belong to the same packed sequence.

  Padding (segment 0) only sees padding, so no query row is fully masked (no NaN); real tokens
  never see padding or another sequence. Causality is applied separately (`is_causal`).
  """
  return (q_segment_ids_BxL[:, None, :, None] == kv_segment_ids_BxS[:, None, None, :])


# Causal self-attention longer than this runs in query chunks that skip the key blocks after them.
# 64 rather than 128: A/B on the 2-core CPU, process CPU seconds per train step 0.276 vs 0.302 s
# (4L d128 seq 256) and 2.06 vs 2.14 s (4L d256 seq 512; docs/training.md, "Speed").
CAUSAL_CHUNK = 64
# Queries of at most this many tokens (decode steps) attend by multiply-and-reduce over the cache.
SMALL_QUERY = 4
_MASKED = -0.7 * float(np.finfo(np.float32).max)  # as jax.nn.dot_product_attention's mask value


def _attend_dense(q_BxLxKxGxE: jax.Array, k_BxSxKxE: jax.Array, v_BxSxKxE: jax.Array,
                  mask_Bx1x1xLxS: jax.Array | None) -> jax.Array:
  """Softmax attention of grouped queries over all S keys; float32 logits and softmax."""
  scale = 1.0 / math.sqrt(q_BxLxKxGxE.shape[-1])
  logits_BxKxGxLxS = jnp.einsum("blkge,bske->bkgls", q_BxLxKxGxE, k_BxSxKxE,
                                preferred_element_type=jnp.float32) * scale
  if mask_Bx1x1xLxS is not None:
    logits_BxKxGxLxS = jnp.where(mask_Bx1x1xLxS, logits_BxKxGxLxS, _MASKED)
  probs = jax.nn.softmax(logits_BxKxGxLxS, axis=-1).astype(v_BxSxKxE.dtype)
  return jnp.einsum("bkgls,bske->blkge", probs, v_BxSxKxE)


def _small_logits(q_BxLxKxGxE: jax.Array, k_BxSxKxE: jax.Array) -> jax.Array:
  """float32 scaled logits [B,L,K,G,S] of a few queries on the [B,S,K,E] cache as it lies: a dot
  batched over kv heads would first transpose the whole cache to [B,K,S,E] at every step, so
  each query head meets every kv head J in dots batched over B only, and the pairs of other
  groups are dropped (J times the attention FLOPs, which are tiny at L <= SMALL_QUERY)."""
  kh = k_BxSxKxE.shape[2]
  scale = 1.0 / math.sqrt(q_BxLxKxGxE.shape[-1])
  # The cache is the dot's left operand: with E its minor (contracting) axis it is read in place
  # (as the right operand XLA:CPU would first copy it to [B,E,S*J]); the small q is transposed.
  logits_BxSxJxLxKxG = jnp.einsum("bsje,blkge->bsjlkg", k_BxSxKxE, q_BxLxKxGxE,
                                  preferred_element_type=jnp.float32)
  own_11J1K1 = np.eye(kh, dtype=bool).T[None, None, :, None, :, None]
  logits_BxSxLxKxG = jnp.sum(jnp.where(own_11J1K1, logits_BxSxJxLxKxG, 0.0), axis=2) * scale
  return jnp.moveaxis(logits_BxSxLxKxG, 1, -1)


def _small_values(probs_BxLxKxGxS: jax.Array, v_BxSxKxE: jax.Array) -> jax.Array:
  """[B,L,K,G,E]: the probabilities' weighted values, each head with its own kv head."""
  kh = v_BxSxKxE.shape[2]
  out_BxLxKxGxJxE = jnp.einsum("blkgs,bsje->blkgje", probs_BxLxKxGxS.astype(v_BxSxKxE.dtype),
                               v_BxSxKxE)
  own_11K1J1 = np.eye(kh, dtype=bool)[None, None, :, None, :, None]
  return jnp.sum(jnp.where(own_11K1J1, out_BxLxKxGxJxE, 0.0), axis=4).astype(v_BxSxKxE.dtype)


def _attend_small(q_BxLxKxGxE: jax.Array, k_BxSxKxE: jax.Array, v_BxSxKxE: jax.Array,
                  mask_Bx1x1xLxS: jax.Array) -> jax.Array:
  """`_attend_dense`'s math for a few queries (decode steps), the cache read in place."""
  logits_BxLxKxGxS = _small_logits(q_BxLxKxGxE, k_BxSxKxE)
  mask_BxLx1x1xS = mask_Bx1x1xLxS[:, 0, 0, :, None, None, :]
  logits_BxLxKxGxS = jnp.where(mask_BxLx1x1xS, logits_BxLxKxGxS, _MASKED)
  return _small_values(jax.nn.softmax(logits_BxLxKxGxS, axis=-1), v_BxSxKxE)


def _causal_block(l: int, s: int, offset: int) -> np.ndarray:
  """bool[1,1,1,l,s]: query offset+i sees key j <= offset+i (a constant, folded at compile time)."""
  return (np.arange(s)[None, :] <= offset + np.arange(l)[:, None])[None, None, None]


def attend(q_BxLxHxE: jax.Array, k_BxSxKxE: jax.Array, v_BxSxKxE: jax.Array,
           mask_Bx1xLxS: jax.Array | None, *, is_causal: bool,
           implementation: str = "xla") -> jax.Array:
  """Scaled dot-product attention: float32 logits and softmax, masked logits at -0.7 float32 max
  (`jax.nn.dot_product_attention`'s math; 'cudnn' calls it, for the fused GPU kernel).

  'xla' on CPU: causal self-attention over more than CAUSAL_CHUNK tokens runs in query chunks of
  CAUSAL_CHUNK, each over the keys up to its end only (the blocks after a chunk are all masked, so
  skipping them changes nothing but the work: (n+1)/2n of it for n chunks); a few queries (decode
  steps) use `_attend_small`. Grouped-query heads are never repeated: H = K x G.
  """
  if implementation == "cudnn":
    return jax.nn.dot_product_attention(q_BxLxHxE, k_BxSxKxE, v_BxSxKxE, mask=mask_Bx1xLxS,
                                        is_causal=is_causal, implementation="cudnn")
  b, l, h, e = q_BxLxHxE.shape
  s, kh = k_BxSxKxE.shape[1], k_BxSxKxE.shape[2]
  q_BxLxKxGxE = q_BxLxHxE.reshape(b, l, kh, h // kh, e)
  mask = None if mask_Bx1xLxS is None else mask_Bx1xLxS[:, :, None]  # [B,1,1,L,S]
  if not is_causal:
    if l <= SMALL_QUERY and mask is not None:
      out = _attend_small(q_BxLxKxGxE, k_BxSxKxE, v_BxSxKxE, mask)
    else:
      out = _attend_dense(q_BxLxKxGxE, k_BxSxKxE, v_BxSxKxE, mask)
    return out.reshape(b, l, h, e)
  if l != s:
    raise ValueError(f"causal attention needs as many queries as keys, got L={l}, S={s}")
  chunk = l if l <= CAUSAL_CHUNK else CAUSAL_CHUNK
  outs = []
  for start in range(0, l, chunk):
    stop = min(start + chunk, l)
    causal = _causal_block(stop - start, stop, start)
    m = causal if mask is None else mask[..., start:stop, :stop] & causal
    outs.append(_attend_dense(q_BxLxKxGxE[:, start:stop], k_BxSxKxE[:, :stop],
                              v_BxSxKxE[:, :stop], m))
  out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)
  return out.reshape(b, l, h, e)


class LayerCache(NamedTuple):
  """One layer's keys and values, [B,S,K,E] each; slot p holds the token at position p."""
  k: jax.Array
  v: jax.Array


Cache = tuple[LayerCache, ...]  # one per layer


class SharedPrefixCache(NamedTuple):
  """One layer's cache of N continuations of each of P prefilled rows (`Transformer.fork_cache`).

  The prefill's keys and values are kept once per row ([P,S,K,E]) rather than copied N times:
  decoding is bound by reading the cache, and N futures of one history (16-50 in zero-shot) would
  otherwise read that history N times at every step. Continuation r (of B = P x N) continues row
  r // N; its token at position prefix_len[r] + i lies in slot i of k, v ([B,T,K,E]).
  """
  prefix_k: jax.Array
  prefix_v: jax.Array
  k: jax.Array
  v: jax.Array
  prefix_len: jax.Array   # int32[B]: the prefilled (real) tokens of each continuation's row


def attend_shared_prefix(q_BxLxHxE: jax.Array, cache: SharedPrefixCache,
                         positions_BxL: jax.Array) -> jax.Array:
  """A few queries per continuation over its row's prefix and its own slots: the softmax of
  `attend` over the same keys (prefix slots < prefix_len, own slots <= position - prefix_len),
  the N continuations of a row meeting its prefix keys in one dot."""
  b, l, h, e = q_BxLxHxE.shape
  p, s, kh, _ = cache.prefix_k.shape
  n, g = b // p, h // kh
  q_BxLxKxGxE = q_BxLxHxE.reshape(b, l, kh, g, e)
  # [B, L] -> [P, N*L]: continuation r = row * N + sample, so a row's queries are contiguous.
  prefix_BxLxKxGxS = _small_logits(q_BxLxKxGxE.reshape(p, n * l, kh, g, e),
                                   cache.prefix_k).reshape(b, l, kh, g, s)
  own_BxLxKxGxT = _small_logits(q_BxLxKxGxE, cache.k)
  t = own_BxLxKxGxT.shape[-1]
  seen_Bx1x1x1xS = (jnp.arange(s)[None, :] < cache.prefix_len[:, None])[:, None, None, None, :]
  slot_BxL = positions_BxL - cache.prefix_len[:, None]
  own_seen_BxLx1x1xT = (jnp.arange(t)[None, None, :] <= slot_BxL[:, :, None])[:, :, None, None, :]
  logits_BxLxKxGxST = jnp.concatenate(
      [jnp.where(seen_Bx1x1x1xS, prefix_BxLxKxGxS, _MASKED),
       jnp.where(own_seen_BxLx1x1xT, own_BxLxKxGxT, _MASKED)], axis=-1)
  probs_BxLxKxGxST = jax.nn.softmax(logits_BxLxKxGxST, axis=-1)
  prefix_out = _small_values(probs_BxLxKxGxST[..., :s].reshape(p, n * l, kh, g, s),
                             cache.prefix_v).reshape(b, l, kh, g, e)
  own_out = _small_values(probs_BxLxKxGxST[..., s:], cache.v)
  return (prefix_out + own_out).reshape(b, l, h, e)


def init_cache(cfg: TransformerConfig, batch: int, length: int) -> Cache:
  shape = (batch, length, cfg.num_kv_heads, cfg.head_dim)
  return tuple(LayerCache(jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype))
               for _ in range(cfg.num_layers))


def cache_mask(positions_BxL: jax.Array, cache_len: int) -> jax.Array:
  """bool[B,1,L,S]: a query at position p sees cache slots 0..p (its history and itself)."""
  return (jnp.arange(cache_len, dtype=jnp.int32)[None, None, None, :]
          <= positions_BxL[:, None, :, None])


def _write(cache_BxSxKxE: jax.Array, new_BxLxKxE: jax.Array, start_B: jax.Array) -> jax.Array:
  """Writes each row's L new entries at its own offset."""
  upd = jax.vmap(lambda c, u, s: jax.lax.dynamic_update_slice(c, u, (s, 0, 0)))
  out = upd(cache_BxSxKxE, new_BxLxKxE.astype(cache_BxSxKxE.dtype), start_B)
  return sharding.constrain(out, ("batch", "length", "kv_heads", "kv"))


def _dropout(rate: float) -> nnx.Dropout:
  # No Rngs: the key comes at call time (the trainer's fold_in(rng, step)), so the model's state
  # stays nnx.Param only and `nnx.merge(graphdef, params)` rebuilds it inside jit.
  return nnx.Dropout(rate, rngs=None)


class Attention(nnx.Module):
  """Multi-head (grouped-query) self-attention with rotary positions and an optional KV cache."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, h, k, e = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    init = nnx.initializers.normal(stddev=0.02)
    out_init = nnx.initializers.normal(stddev=0.02 / math.sqrt(2 * cfg.num_layers))
    pd = cfg.params_dtype
    self.q = nnx.Param(_param(init, ("embed", "heads", "kv"))(rngs.params(), (d, h, e), pd))
    self.k = nnx.Param(_param(init, ("embed", "kv_heads", "kv"))(rngs.params(), (d, k, e), pd))
    self.v = nnx.Param(_param(init, ("embed", "kv_heads", "kv"))(rngs.params(), (d, k, e), pd))
    self.o = nnx.Param(_param(out_init, ("heads", "kv", "embed"))(rngs.params(), (h, e, d), pd))

  def project_qkv(self, x_BxLxD: jax.Array, positions_BxL: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Rotated queries and keys, and values (a KV cache stores the k and v returned here)."""
    dt = self.cfg.compute_dtype
    q_BxLxHxE = jnp.einsum("bld,dhe->blhe", x_BxLxD, self.q[...].astype(dt))
    k_BxLxKxE = jnp.einsum("bld,dke->blke", x_BxLxD, self.k[...].astype(dt))
    v_BxLxKxE = jnp.einsum("bld,dke->blke", x_BxLxD, self.v[...].astype(dt))
    q_BxLxHxE = rotary(q_BxLxHxE, positions_BxL, self.cfg.rope_theta)
    k_BxLxKxE = rotary(k_BxLxKxE, positions_BxL, self.cfg.rope_theta)
    return q_BxLxHxE, k_BxLxKxE, v_BxLxKxE

  def attend_at(self, x_BxLxD: jax.Array, positions_BxL: jax.Array, segment_ids_BxL: jax.Array,
                at_B: jax.Array) -> jax.Array:
    """Output [B,1,D] of the one query at slot at_B of each row over that row's keys (same
    segment, slots <= at_B): what __call__ gives there, without the other L - 1 queries."""
    dt = self.cfg.compute_dtype
    take = lambda a: jnp.take_along_axis(a, at_B.reshape((-1,) + (1,) * (a.ndim - 1)), axis=1)
    q_Bx1xHxE = rotary(jnp.einsum("bld,dhe->blhe", take(x_BxLxD), self.q[...].astype(dt)),
                       take(positions_BxL), self.cfg.rope_theta)
    k_BxSxKxE = rotary(jnp.einsum("bld,dke->blke", x_BxLxD, self.k[...].astype(dt)),
                       positions_BxL, self.cfg.rope_theta)
    v_BxSxKxE = jnp.einsum("bld,dke->blke", x_BxLxD, self.v[...].astype(dt))
    causal_Bx1x1xS = (jnp.arange(x_BxLxD.shape[1], dtype=jnp.int32)[None, None, None, :]
                      <= at_B[:, None, None, None])
    mask_Bx1x1xS = segment_mask(take(segment_ids_BxL), segment_ids_BxL) & causal_Bx1x1xS
    y_Bx1xHxE = attend(q_Bx1xHxE, k_BxSxKxE, v_BxSxKxE, mask_Bx1x1xS, is_causal=False,
                       implementation="xla")
    return self.project_out(y_Bx1xHxE)

  def project_out(self, y_BxLxHxE: jax.Array) -> jax.Array:
    return jnp.einsum("blhe,hed->bld", y_BxLxHxE, self.o[...].astype(self.cfg.compute_dtype))

  def __call__(self, x_BxLxD: jax.Array, positions_BxL: jax.Array,
               mask_Bx1xLxS: jax.Array | None, cache: LayerCache | SharedPrefixCache | None = None
               ) -> tuple[jax.Array, LayerCache | SharedPrefixCache | None]:
    """(output [B,L,D], updated cache). Without a cache S = L and the mask is the segment mask
    (causality added here); with a LayerCache, the L new keys/values are written at slot
    positions[:, 0] and the mask is `cache_mask` over the cache's S slots; with a
    SharedPrefixCache at slot positions[:, 0] - prefix_len, the masks coming from the cache."""
    q, k, v = self.project_qkv(x_BxLxD, positions_BxL)
    if cache is None:
      y_BxLxHxE = attend(q, k, v, mask_Bx1xLxS, is_causal=True,
                         implementation=self.cfg.attention_impl)
    elif isinstance(cache, SharedPrefixCache):
      start_B = positions_BxL[:, 0] - cache.prefix_len
      cache = cache._replace(k=_write(cache.k, k, start_B), v=_write(cache.v, v, start_B))
      y_BxLxHxE = attend_shared_prefix(q, cache, positions_BxL)
    else:
      start_B = positions_BxL[:, 0]
      cache = LayerCache(_write(cache.k, k, start_B), _write(cache.v, v, start_B))
      # The cache mask is not causal-shaped (L < S), which the fused kernels do not take.
      y_BxLxHxE = attend(q, cache.k, cache.v, mask_Bx1xLxS, is_causal=False,
                         implementation="xla")
    return self.project_out(y_BxLxHxE), cache


class MLP(nnx.Module):
  """SwiGLU feed-forward block."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.dtype = cfg.compute_dtype
    d, f, pd = cfg.d_model, cfg.mlp_dim, cfg.params_dtype
    init = nnx.initializers.normal(stddev=0.02)
    out_init = nnx.initializers.normal(stddev=0.02 / math.sqrt(2 * cfg.num_layers))
    self.gate = nnx.Param(_param(init, ("embed", "mlp"))(rngs.params(), (d, f), pd))
    self.up = nnx.Param(_param(init, ("embed", "mlp"))(rngs.params(), (d, f), pd))
    self.down = nnx.Param(_param(out_init, ("mlp", "embed"))(rngs.params(), (f, d), pd))

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    dt = self.dtype
    gate_BxLxF = x_BxLxD @ self.gate[...].astype(dt)
    up_BxLxF = x_BxLxD @ self.up[...].astype(dt)
    return (jax.nn.silu(gate_BxLxF) * up_BxLxF) @ self.down[...].astype(dt)


class Block(nnx.Module):
  """Pre-norm transformer block."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)
    self.dropout = _dropout(cfg.dropout_rate)

  def __call__(self, x_BxLxD: jax.Array, positions_BxL: jax.Array,
               mask_Bx1xLxS: jax.Array | None, dropout_rng: jax.Array | None = None,
               cache: LayerCache | SharedPrefixCache | None = None
               ) -> tuple[jax.Array, LayerCache | SharedPrefixCache | None]:
    rng_a = rng_m = None
    if dropout_rng is not None:
      rng_a, rng_m = jax.random.split(dropout_rng)
    h, cache = self.attn(self.attn_norm(x_BxLxD), positions_BxL, mask_Bx1xLxS, cache)
    x_BxLxD = x_BxLxD + self.dropout(h, deterministic=rng_a is None, rngs=rng_a)
    h = self.mlp(self.mlp_norm(x_BxLxD))
    x_BxLxD = x_BxLxD + self.dropout(h, deterministic=rng_m is None, rngs=rng_m)
    return sharding.constrain(x_BxLxD, ("batch", "length", "act_embed")), cache

  def at(self, x_BxLxD: jax.Array, positions_BxL: jax.Array, segment_ids_BxL: jax.Array,
         at_B: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    """The block's output [B,1,D] at slot at_B of each row only (a pooled model's last block)."""
    rng_a = rng_m = None
    if dropout_rng is not None:
      rng_a, rng_m = jax.random.split(dropout_rng)
    x_Bx1xD = jnp.take_along_axis(x_BxLxD, at_B[:, None, None], axis=1)
    h = self.attn.attend_at(self.attn_norm(x_BxLxD), positions_BxL, segment_ids_BxL, at_B)
    x_Bx1xD = x_Bx1xD + self.dropout(h, deterministic=rng_a is None, rngs=rng_a)
    h = self.mlp(self.mlp_norm(x_Bx1xD))
    return x_Bx1xD + self.dropout(h, deterministic=rng_m is None, rngs=rng_m)


def sinusoid(x_BxL: jax.Array, num_features: int, min_period: float,
             max_period: float) -> jax.Array:
  """float32[B,L,num_features]: sin and cos of x at geometrically spaced periods."""
  half = num_features // 2
  periods = np.geomspace(min_period, max_period, half).astype(np.float32)
  omega_11T2 = (2.0 * np.pi / periods).reshape(1, 1, half)
  angle_BxLxT2 = x_BxL.astype(jnp.float32)[..., None] * omega_11T2
  return jnp.concatenate([jnp.sin(angle_BxLxT2), jnp.cos(angle_BxLxT2)], axis=-1)


class TimeEmbedding(nnx.Module):
  """Additive embedding of age (years) and elapsed time (log1p days) at each token."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    n_signals = 2 if cfg.time_embedding == "age_and_days" else 1
    t = n_signals * cfg.num_time_features
    # Zero init: the sin/cos features have unit scale, so a random projection would swamp the
    # token embeddings (std 0.02) at the start; from zero the model adds time as it finds it useful.
    self.proj = nnx.Param(_param(nnx.initializers.zeros, ("time_features", "embed"))(
        rngs.params(), (t, cfg.d_model), cfg.params_dtype))

  def __call__(self, age_BxL: jax.Array, days_BxL: jax.Array | None) -> jax.Array:
    n = self.cfg.num_time_features
    # Ages from 0.1 to 200 years of period: resolves months in infancy and decades in old age.
    feats = sinusoid(jnp.maximum(age_BxL, 0.0), n, 0.1, 200.0)
    feats = jnp.where((age_BxL >= 0.0)[..., None], feats, 0.0)  # age < 0: birth date unknown
    if self.cfg.time_embedding == "age_and_days":
      if days_BxL is None:
        raise ValueError("time_embedding='age_and_days' needs `days`")
      # log1p(days) spans 0..~10 over a 60-year record; periods 0.5..50 cover it.
      log_days_BxL = jnp.log1p(jnp.maximum(days_BxL, 0.0))
      feats = jnp.concatenate([feats, sinusoid(log_days_BxL, n, 0.5, 50.0)], axis=-1)
    dt = self.cfg.compute_dtype
    return feats.astype(dt) @ self.proj[...].astype(dt)


class Transformer(nnx.Module):
  """Token (+ time) embedding, `num_layers` blocks, final norm, logits over the padded vocab."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embedding = nnx.Param(_param(nnx.initializers.normal(stddev=0.02), ("vocab", "embed"))(
        rngs.params(), (cfg.padded_vocab_size, cfg.d_model), cfg.params_dtype))
    if cfg.time_embedding != "none":
      self.time_embed = TimeEmbedding(cfg, rngs=rngs)
    # Named attributes (not a list) keep parameter paths plain strings: layer_0, layer_1, ...
    for i in range(cfg.num_layers):
      setattr(self, f"layer_{i}", Block(cfg, rngs=rngs))
    self.final_norm = RMSNorm(cfg.d_model, cfg, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = nnx.Param(_param(nnx.initializers.normal(stddev=0.02), ("embed", "vocab"))(
          rngs.params(), (cfg.d_model, cfg.padded_vocab_size), cfg.params_dtype))

  @property
  def layers(self) -> list[Block]:
    return [getattr(self, f"layer_{i}") for i in range(self.cfg.num_layers)]

  def embed(self, tokens_BxL: jax.Array, age_BxL: jax.Array | None = None,
            days_BxL: jax.Array | None = None) -> jax.Array:
    dt = self.cfg.compute_dtype
    # Gather from the whole table (all-gathered like any FSDP weight): a gather from vocabulary
    # or width shards makes XLA fall back to replicating the table and its output.
    table_VxD = sharding.constrain(self.embedding[...], (None, None))
    x_BxLxD = jnp.take(table_VxD, tokens_BxL, axis=0).astype(dt)
    if self.cfg.time_embedding != "none":
      if age_BxL is None:
        raise ValueError(f"time_embedding={self.cfg.time_embedding!r} needs `age`")
      x_BxLxD = x_BxLxD + self.time_embed(age_BxL, days_BxL)
    return sharding.constrain(x_BxLxD, ("batch", "length", "act_embed"))

  def output_head(self) -> tuple[jax.Array, jax.Array]:
    """(w [D,V] in the compute dtype, float32 bias [V]): logits = h @ w + bias. The bias is -1e9
    on the padded vocabulary rows (an add, not a select: nothing to differentiate)."""
    dt = self.cfg.compute_dtype
    w_DxV = (self.embedding[...].T if self.cfg.tie_embeddings else self.lm_head[...]).astype(dt)
    real_V = jnp.arange(self.cfg.padded_vocab_size) < self.cfg.vocab_size
    return w_DxV, jnp.where(real_V, 0.0, -1e9).astype(jnp.float32)

  def logits(self, h_BxLxD: jax.Array) -> jax.Array:
    """float32 logits; padded vocabulary rows get a large negative value."""
    w_DxV, bias_V = self.output_head()
    return jnp.einsum("bld,dv->blv", h_BxLxD.astype(w_DxV.dtype), w_DxV,
                      preferred_element_type=jnp.float32) + bias_V[None, None, :]

  def init_cache(self, batch: int, length: int) -> Cache:
    return init_cache(self.cfg, batch, length)

  def fork_cache(self, cache: Cache, lengths_B: jax.Array, num_samples: int,
                 new_tokens: int) -> tuple[SharedPrefixCache, ...]:
    """The cache of num_samples continuations of each prefilled row (continuations
    r * num_samples ... of row r), each with room for new_tokens; the prefill is kept once."""
    b = lengths_B.shape[0] * num_samples
    shape = (b, new_tokens, self.cfg.num_kv_heads, self.cfg.head_dim)
    prefix_len_B = jnp.repeat(lengths_B.astype(jnp.int32), num_samples)
    zeros = lambda: sharding.constrain(jnp.zeros(shape, self.cfg.compute_dtype),
                                       ("batch", "length", "kv_heads", "kv"))
    return tuple(SharedPrefixCache(c.k, c.v, zeros(), zeros(), prefix_len_B) for c in cache)

  def __call__(self, tokens_BxL: jax.Array | None, segment_ids_BxL: jax.Array | None,
               positions_BxL: jax.Array, age_BxL: jax.Array | None = None,
               days_BxL: jax.Array | None = None, *, embeddings_BxLxD: jax.Array | None = None,
               cache: Cache | None = None, dropout_rng: jax.Array | None = None,
               return_logits: bool = True, at_B: jax.Array | None = None) -> ModelOutput:
    """ModelOutput(float32 logits [B,L,V] or None, final hidden states [B,L,D], cache or None).

    Without a cache, position t attends to positions <= t of its own segment. embeddings_BxLxD
    (e.g. `embed(...)` for attribution) replaces tokens, age and days. With a cache (from
    `init_cache`; segment_ids None), see `lmm_jax.model.backbone`. With at_B (int32[B], no
    cache) the outputs are those at slot at_B of each row only ([B,1,...]): the last block
    computes that query alone. Dropout runs only with a dropout_rng (training).
    """
    check_inputs(tokens_BxL, segment_ids_BxL, age_BxL, days_BxL, embeddings_BxLxD, cache)
    if at_B is not None and cache is not None:
      raise ValueError("at_B reads one position of a full forward: pass no cache with it")
    x_BxLxD = (self.embed(tokens_BxL, age_BxL, days_BxL) if embeddings_BxLxD is None
               else embeddings_BxLxD)
    if cache is None:
      mask_Bx1xLxS = segment_mask(segment_ids_BxL, segment_ids_BxL)
    elif isinstance(cache[0], SharedPrefixCache):
      mask_Bx1xLxS = None  # each layer's two masks come from the cache (attend_shared_prefix)
    else:
      mask_Bx1xLxS = cache_mask(positions_BxL, cache[0].k.shape[1])
    new_cache = []
    for i, block in enumerate(self.layers):
      rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
      if at_B is not None and i == self.cfg.num_layers - 1:
        # Only the keys and values of the last block are needed at every position.
        x_BxLxD = block.at(x_BxLxD, positions_BxL, segment_ids_BxL, at_B.astype(jnp.int32), rng)
        break
      layer_cache = None if cache is None else cache[i]
      if self.cfg.remat:
        x_BxLxD, layer_cache = nnx.remat(lambda blk, *a: blk(*a))(
            block, x_BxLxD, positions_BxL, mask_Bx1xLxS, rng, layer_cache)
      else:
        x_BxLxD, layer_cache = block(x_BxLxD, positions_BxL, mask_Bx1xLxS, rng, layer_cache)
      new_cache.append(layer_cache)
    h_BxLxD = self.final_norm(x_BxLxD)
    return ModelOutput(self.logits(h_BxLxD) if return_logits else None, h_BxLxD,
                       None if cache is None else tuple(new_cache))


def count_params(model_or_state: Any) -> int:
  """Number of parameters of an nnx Module, nnx State or a tree of arrays."""
  if isinstance(model_or_state, nnx.Module):
    model_or_state = nnx.state(model_or_state, nnx.Param)
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(model_or_state)))


def flops_per_token(cfg: TransformerConfig, seq_len: int, num_params: int) -> float:
  """Training FLOPs per token: 6 N (matmul parameters) + 12 L H E T (attention), as in PaLM."""
  embed = cfg.padded_vocab_size * cfg.d_model
  matmul_params = num_params - (0 if cfg.tie_embeddings else embed)
  return 6.0 * matmul_params + 12.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
