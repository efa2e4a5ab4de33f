"""Per-example losses of the fine-tuning heads (pure; optax's where optax has them)."""

from __future__ import annotations

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
