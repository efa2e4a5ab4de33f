"""The next-token loss fused with the output projection equals the plain one, value and gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmm_jax.tasks import losses

B, L, D, V, REAL = 3, 37, 16, 64, 59  # L not a multiple of the chunk: the padded chunk is dropped


def _inputs(seed=0):
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
  h = jax.random.normal(k1, (B, L, D))
  w = jax.random.normal(k2, (D, V)) * 0.3
  targets = jax.random.randint(k3, (B, L), 0, REAL)
  bias = jnp.where(jnp.arange(V) < REAL, 0.0, -1e9)
  weights = (jnp.arange(L)[None, :] < jnp.array([L, 20, 5])[:, None]).astype(jnp.float32)
  return h, w, bias, targets, weights


def _plain_nll(h, w, bias, targets):
  logits = h @ w + bias[None, None, :]
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("chunk", [1, 8, 64])
def test_fused_loss_and_gradients_equal_the_plain_ones(chunk):
  h, w, bias, targets, weights = _inputs()
  fused = lambda h, w: (losses.next_token_nll(h, w, bias, targets, chunk) * weights).sum()
  plain = lambda h, w: (_plain_nll(h, w, bias, targets) * weights).sum()
  (v1, g1), (v2, g2) = (jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(h, w)
                        for f in (fused, plain))
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # Weighted-out positions get no gradient, the padded vocabulary rows none either.
  assert np.all(np.asarray(g1[0])[2, 5:] == 0.0)
  np.testing.assert_allclose(np.asarray(g1[1])[:, REAL:], 0.0, atol=1e-12)


def test_rank_counts_the_logits_above_the_target():
  h, w, bias, targets, _ = _inputs(1)
  nll, rank = losses.next_token_nll_and_rank(h, w, bias, targets, 8)
  logits = h @ w + bias[None, None, :]
  target = jnp.take_along_axis(logits, targets[..., None], -1)
  np.testing.assert_array_equal(rank, (logits > target).sum(-1))
  np.testing.assert_allclose(nll, _plain_nll(h, w, bias, targets), rtol=1e-5)
  assert rank.dtype == jnp.int32


def test_bfloat16_weights_give_float32_losses_and_weight_dtype_gradients():
  h, w, bias, targets, weights = _inputs(2)
  wb = w.astype(jnp.bfloat16)
  nll = losses.next_token_nll(h.astype(jnp.bfloat16), wb, bias, targets, 8)
  assert nll.dtype == jnp.float32
  np.testing.assert_allclose(nll, _plain_nll(h, w, bias, targets), rtol=0.05, atol=0.05)
  gw = jax.grad(lambda w: (losses.next_token_nll(h, w, bias, targets, 8) * weights).sum())(wb)
  assert gw.dtype == jnp.bfloat16
