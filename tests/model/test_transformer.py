"""The transformer: causality and segment isolation by gradient, padding, logical axes, variants."""

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmm_jax.model import Transformer, TransformerConfig, count_params

B, L = 2, 12


def _cfg(**kw) -> TransformerConfig:
  base = dict(vocab_size=50, padded_vocab_size=64, num_layers=2, d_model=32, num_heads=4,
              num_kv_heads=2, head_dim=8, mlp_dim=64, num_time_features=8)
  base.update(kw)
  return TransformerConfig(**base)


def _inputs(segments: np.ndarray) -> dict[str, jnp.ndarray]:
  rng = np.random.default_rng(0)
  seg = jnp.asarray(segments, jnp.int32)
  pos = np.zeros(segments.shape, np.int32)
  for b in range(segments.shape[0]):
    for s in np.unique(segments[b]):
      idx = np.nonzero(segments[b] == s)[0]
      pos[b, idx] = np.arange(len(idx))
  tokens = np.where(segments > 0, rng.integers(3, 50, size=segments.shape), 0)
  days = np.cumsum(rng.integers(0, 20, size=segments.shape), axis=1).astype(np.float32)
  return dict(tokens=jnp.asarray(tokens, jnp.int32), segment_ids=seg, positions=jnp.asarray(pos),
              age=jnp.full(segments.shape, 60.0, jnp.float32), days=jnp.asarray(days))


def _run(model: Transformer, inp):
  return model(inp["tokens"], inp["segment_ids"], inp["positions"], inp["age"], inp["days"])


def _hidden_fn(model: Transformer, inp):
  def f(x_BxLxD):
    return model.forward_embeddings(x_BxLxD, inp["segment_ids"], inp["positions"])
  return f


def test_causality_by_gradient():
  model = Transformer(_cfg(), rngs=nnx.Rngs(0))
  inp = _inputs(np.ones((B, L), np.int32))
  x = model.embed(inp["tokens"], inp["age"], inp["days"])
  f = _hidden_fn(model, inp)
  grad_at = jax.jit(jax.grad(
      lambda x, w_L: (model.logits(f(x))[..., :50].sum(axis=-1) * w_L[None, :]).sum()))
  for t in (0, 5, L - 1):
    g = grad_at(x, jnp.zeros((L,)).at[t].set(1.0))
    norms = np.abs(np.asarray(g)).sum(axis=(0, 2))
    assert np.all(norms[t + 1:] == 0.0), f"position {t} depends on later inputs: {norms}"
    assert np.all(norms[:t + 1] > 0.0)


def test_packed_segments_are_isolated():
  segs = np.array([[1] * 5 + [2] * 4 + [0] * 3, [1] * 12], np.int32)
  model = Transformer(_cfg(), rngs=nnx.Rngs(1))
  inp = _inputs(segs)
  x = model.embed(inp["tokens"], inp["age"], inp["days"])
  f = _hidden_fn(model, inp)
  # Segment 2 of row 0 (positions 5..8) must not see segment 1 (0..4) nor padding (9..11).
  g = jax.jit(jax.grad(lambda x: f(x)[0, 5:9].sum()))(x)
  norms = np.abs(np.asarray(g[0])).sum(axis=-1)
  assert np.all(norms[:5] == 0.0) and np.all(norms[9:] == 0.0) and np.all(norms[5:9] > 0)
  # ... and equals the same sequence run alone at the start of a row.
  alone = {k: v[:1] for k, v in inp.items()}
  alone = {k: jnp.concatenate([v[:, 5:9], jnp.zeros_like(v[:, :8])], axis=1)
           for k, v in alone.items()}
  run = nnx.jit(_run)
  h_packed = run(model, inp)[1][0, 5:9]
  h_alone = run(model, alone)[1][0, :4]
  np.testing.assert_allclose(h_packed, h_alone, atol=1e-5)


def test_padding_gives_finite_outputs_and_masks_padded_vocab():
  segs = np.array([[1] * 4 + [0] * 8, [0] * 12], np.int32)
  model = Transformer(_cfg(), rngs=nnx.Rngs(2))
  logits, h = _run(model, _inputs(segs))
  assert logits.shape == (B, L, 64) and h.shape == (B, L, 32)
  assert np.all(np.isfinite(np.asarray(h)))
  assert np.all(np.asarray(logits)[..., 50:] < -1e8)


def test_every_parameter_has_logical_axes():
  model = Transformer(_cfg(), rngs=nnx.Rngs(0))
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    assert names is not None and len(names) == var.ndim, (path, names)
    assert all(isinstance(k, str) for k in path)
  axes = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  assert axes[("embedding",)].get_metadata()["out_sharding"] == ("vocab", "embed")
  assert axes[("layer_0", "mlp", "gate")].get_metadata()["out_sharding"] == ("embed", "mlp")


@pytest.mark.parametrize("mode", ["none", "age", "age_and_days"])
def test_time_embedding_modes(mode):
  model = Transformer(_cfg(time_embedding=mode), rngs=nnx.Rngs(0))
  inp = _inputs(np.ones((B, L), np.int32))
  logits, _ = _run(model, inp)
  assert np.all(np.isfinite(np.asarray(logits)))
  n_time = {"none": 0, "age": 8 * 32, "age_and_days": 16 * 32}[mode]
  assert count_params(model) == count_params(Transformer(_cfg(time_embedding="none"),
                                                         rngs=nnx.Rngs(0))) + n_time
  if mode != "none":  # the projection starts at zero; once trained, age changes the output
    proj = model.time_embed.proj
    proj[...] = jax.random.normal(jax.random.key(0), proj.shape) * 0.02
    logits = _run(model, inp)[0]
    older = dict(inp, age=inp["age"] + 10.0)
    assert not np.allclose(_run(model, older)[0], logits)


def test_remat_and_bf16_match_reference():
  cfg = _cfg()
  inp = _inputs(np.ones((B, L), np.int32))
  ref = Transformer(cfg, rngs=nnx.Rngs(3))
  params = nnx.state(ref, nnx.Param)

  def loss(model):
    return jnp.mean(_run(model, inp)[0][..., :50] ** 2)

  remat = Transformer(dataclasses.replace(cfg, remat=True), rngs=nnx.Rngs(3))
  nnx.update(remat, params)
  grad = nnx.jit(nnx.grad(loss))
  g_ref = grad(ref)
  g_remat = grad(remat)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  bf16 = Transformer(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(3))
  nnx.update(bf16, params)
  out = _run(bf16, inp)[0]
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out[..., :50], _run(ref, inp)[0][..., :50], atol=0.05)


def test_config_validation():
  with pytest.raises(ValueError, match="time_embedding"):
    _cfg(time_embedding="calendar")
  with pytest.raises(ValueError, match="num_kv_heads"):
    _cfg(num_heads=4, num_kv_heads=3)
