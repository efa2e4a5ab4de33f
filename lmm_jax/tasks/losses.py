"""The tasks' losses (pure): per-example losses of the fine-tuning heads (optax's where optax
has them) and the next-token loss fused with the output projection.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


def tweedie_nll(eta_B: jax.Array, y_B: jax.Array, power: float) -> jax.Array:
  """Tweedie negative log-likelihood of y under mean exp(eta), up to terms free of the mean:
  -y mu^(1-p) / (1-p) + mu^(2-p) / (2-p)."""
  if not 1.0 < power < 2.0:
    raise ValueError(f"tweedie power {power} must be in (1, 2)")
  return (-y_B * jnp.exp((1.0 - power) * eta_B) / (1.0 - power)
          + jnp.exp((2.0 - power) * eta_B) / (2.0 - power))


def poisson_nll(eta_B: jax.Array, y_B: jax.Array) -> jax.Array:
  """Poisson negative log-likelihood of y under mean exp(eta), up to terms free of the mean."""
  return jnp.exp(eta_B) - y_B * eta_B


def huber(r_B: jax.Array, delta: float) -> jax.Array:
  """Huber loss of residuals r (quadratic within delta, linear outside)."""
  return optax.huber_loss(r_B, delta=delta)


def pinball(y_B: jax.Array, q_B: jax.Array, tau: float) -> jax.Array:
  """Quantile (pinball) loss of the tau-quantile prediction q."""
  r = y_B - q_B
  return jnp.maximum(tau * r, (tau - 1.0) * r)


def binary_cross_entropy(logits_BxC: jax.Array, labels_BxC: jax.Array) -> jax.Array:
  """Elementwise binary cross-entropy with logits (numerically stable)."""
  return optax.sigmoid_binary_cross_entropy(logits_BxC, labels_BxC)


# The next-token loss over the vocabulary, fused with the output projection and taken in chunks of
# sequence positions: the [B,L,V] logits are never materialized, and the backward is written out
# (softmax minus one-hot, two dots) instead of differentiating take_along_axis (a scatter), the
# padded-vocabulary mask (a select) and a transposed copy of the logits' gradient for the weight's
# dot: 104 ms instead of 378 ms for the demo step's head at 8 x 512 tokens, vocabulary 4,480, on
# the 2-core CPU (docs/training.md, "Speed"). The forward keeps only logsumexp per position; the
# backward recomputes each chunk's logits (one more [C,D] x [D,V] dot per chunk).


def _chunked(x_BxL: jax.Array, chunk: int) -> jax.Array:
  """[B, L, ...] -> [L / chunk, B, chunk, ...] (L padded with zeros to a multiple of chunk)."""
  b, l = x_BxL.shape[:2]
  pad = -l % chunk
  if pad:
    x_BxL = jnp.pad(x_BxL, [(0, 0), (0, pad)] + [(0, 0)] * (x_BxL.ndim - 2))
  x = x_BxL.reshape(b, (l + pad) // chunk, chunk, *x_BxL.shape[2:])
  return jnp.moveaxis(x, 1, 0)


def _unchunked(x_NxBxC: jax.Array, length: int) -> jax.Array:
  x = jnp.moveaxis(x_NxBxC, 0, 1)
  return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _chunk_logits(h_BxCxD: jax.Array, w_DxV: jax.Array, bias_V: jax.Array) -> jax.Array:
  logits_BxCxV = jnp.einsum("bcd,dv->bcv", h_BxCxD.astype(w_DxV.dtype), w_DxV,
                            preferred_element_type=jnp.float32)
  return logits_BxCxV + bias_V[None, None, :]


def _target_logit(logits_BxCxV: jax.Array, targets_BxC: jax.Array) -> jax.Array:
  # A one-hot product, not take_along_axis: elementwise, so it fuses with the logsumexp pass.
  one_hot_BxCxV = jax.nn.one_hot(targets_BxC, logits_BxCxV.shape[-1], dtype=logits_BxCxV.dtype)
  return (logits_BxCxV * one_hot_BxCxV).sum(-1)


def _nll_forward(h_BxLxD, w_DxV, bias_V, targets_BxL, chunk, with_rank):
  def body(_, xs):
    h_BxCxD, t_BxC = xs
    logits_BxCxV = _chunk_logits(h_BxCxD, w_DxV, bias_V)
    logz_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1)
    target_BxC = _target_logit(logits_BxCxV, t_BxC)
    out = (logz_BxC - target_BxC, logz_BxC)
    if with_rank:  # logits above the target's (ties favour the target)
      out += ((logits_BxCxV > target_BxC[..., None]).sum(-1).astype(jnp.int32),)
    return None, out

  _, outs = jax.lax.scan(body, None, (_chunked(h_BxLxD, chunk), _chunked(targets_BxL, chunk)))
  return tuple(_unchunked(o, targets_BxL.shape[1]) for o in outs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def next_token_nll(h_BxLxD: jax.Array, w_DxV: jax.Array, bias_V: jax.Array,
                   targets_BxL: jax.Array, chunk: int) -> jax.Array:
  """float32 [B,L] -log softmax(h @ w + bias)[target], in chunks of `chunk` positions.

  w is the output projection in the compute dtype (its dots accumulate in float32), bias a
  float32 [V] (-1e9 on padded vocabulary rows); differentiable in h and w."""
  return _nll_forward(h_BxLxD, w_DxV, bias_V, targets_BxL, chunk, False)[0]


def _nll_fwd(h_BxLxD, w_DxV, bias_V, targets_BxL, chunk):
  nll_BxL, logz_BxL = _nll_forward(h_BxLxD, w_DxV, bias_V, targets_BxL, chunk, False)
  return nll_BxL, (h_BxLxD, w_DxV, bias_V, targets_BxL, logz_BxL)


def _nll_bwd(chunk, res, g_BxL):
  h_BxLxD, w_DxV, bias_V, targets_BxL, logz_BxL = res
  dt = w_DxV.dtype

  def body(dw_DxV, xs):
    h_BxCxD, t_BxC, logz_BxC, g_BxC = xs
    logits_BxCxV = _chunk_logits(h_BxCxD, w_DxV, bias_V)
    one_hot_BxCxV = jax.nn.one_hot(t_BxC, logits_BxCxV.shape[-1], dtype=jnp.float32)
    dlogits_BxCxV = ((jnp.exp(logits_BxCxV - logz_BxC[..., None]) - one_hot_BxCxV)
                     * g_BxC[..., None]).astype(dt)
    dw_DxV = dw_DxV + jnp.einsum("bcd,bcv->dv", h_BxCxD.astype(dt), dlogits_BxCxV,
                                 preferred_element_type=jnp.float32)
    dh_BxCxD = jnp.einsum("bcv,dv->bcd", dlogits_BxCxV, w_DxV, preferred_element_type=jnp.float32)
    return dw_DxV, dh_BxCxD.astype(h_BxLxD.dtype)

  xs = tuple(_chunked(x, chunk) for x in (h_BxLxD, targets_BxL, logz_BxL, g_BxL))
  dw_DxV, dh = jax.lax.scan(body, jnp.zeros(w_DxV.shape, jnp.float32), xs)
  return (_unchunked(dh, h_BxLxD.shape[1]), dw_DxV.astype(w_DxV.dtype),
          jnp.zeros_like(bias_V), None)


next_token_nll.defvjp(_nll_fwd, _nll_bwd)


def next_token_nll_and_rank(h_BxLxD: jax.Array, w_DxV: jax.Array, bias_V: jax.Array,
                            targets_BxL: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
  """(nll float32 [B,L], rank int32 [B,L]) for evaluation: the rank of each target among the
  logits (0: the most likely; ties favour the target), in the same chunks; not differentiable."""
  nll_BxL, _, rank_BxL = _nll_forward(h_BxLxD, w_DxV, bias_V, targets_BxL, chunk, True)
  return nll_BxL, rank_BxL
