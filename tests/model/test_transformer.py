"""The transformer: causality and segment isolation by gradient, padding, logical axes, variants."""

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmm_jax.model import Transformer, TransformerConfig, count_params, heads, transformer

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
    return model(None, inp["segment_ids"], inp["positions"], embeddings_BxLxD=x_BxLxD,
                 return_logits=False).hidden
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
  h_packed = run(model, inp).hidden[0, 5:9]
  h_alone = run(model, alone).hidden[0, :4]
  np.testing.assert_allclose(h_packed, h_alone, atol=1e-5)


def test_padding_gives_finite_outputs_and_masks_padded_vocab():
  segs = np.array([[1] * 4 + [0] * 8, [0] * 12], np.int32)
  model = Transformer(_cfg(), rngs=nnx.Rngs(2))
  logits, h, cache = _run(model, _inputs(segs))
  assert cache is None
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
  logits = _run(model, inp).logits
  assert np.all(np.isfinite(np.asarray(logits)))
  n_time = {"none": 0, "age": 8 * 32, "age_and_days": 16 * 32}[mode]
  assert count_params(model) == count_params(Transformer(_cfg(time_embedding="none"),
                                                         rngs=nnx.Rngs(0))) + n_time
  if mode != "none":  # the projection starts at zero; once trained, age changes the output
    proj = model.time_embed.proj
    proj[...] = jax.random.normal(jax.random.key(0), proj.shape) * 0.02
    logits = _run(model, inp).logits
    older = dict(inp, age=inp["age"] + 10.0)
    assert not np.allclose(_run(model, older).logits, logits)


def test_remat_and_bf16_match_reference():
  cfg = _cfg()
  inp = _inputs(np.ones((B, L), np.int32))
  ref = Transformer(cfg, rngs=nnx.Rngs(3))
  params = nnx.state(ref, nnx.Param)

  def loss(model):
    return jnp.mean(_run(model, inp).logits[..., :50] ** 2)

  remat = Transformer(dataclasses.replace(cfg, remat=True), rngs=nnx.Rngs(3))
  nnx.update(remat, params)
  grad = nnx.jit(nnx.grad(loss))
  g_ref = grad(ref)
  g_remat = grad(remat)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  bf16 = Transformer(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(3))
  nnx.update(bf16, params)
  out = _run(bf16, inp).logits
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out[..., :50], _run(ref, inp).logits[..., :50], atol=0.05)


def test_config_validation():
  with pytest.raises(ValueError, match="time_embedding"):
    _cfg(time_embedding="calendar")
  with pytest.raises(ValueError, match="num_kv_heads"):
    _cfg(num_heads=4, num_kv_heads=3)


def test_cached_forward_matches_full_forward_on_logits():
  # Right-padded prefill of rows of different lengths, then single-token steps and 2-token chunks
  # at each row's own offset, against one full pass over the whole sequences.
  model = Transformer(_cfg(time_embedding="age_and_days"), rngs=nnx.Rngs(4))
  b, l, p = 3, 14, 6
  inp = _inputs(np.ones((b, l), np.int32))
  full_BxLxV = np.asarray(nnx.jit(_run)(model, inp).logits)
  step = nnx.jit(lambda m, t, q, a, d, c: m(t, None, q, a, d, cache=c))
  lengths = np.array([6, 3, 5])
  live_BxP = jnp.asarray(np.arange(p)[None, :] < lengths[:, None])
  pad = lambda x: jnp.where(live_BxP, x[:, :p], jnp.zeros_like(x[:, :p]))
  positions_BxP = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None, :], (b, p))
  out = step(model, pad(inp["tokens"]), positions_BxP, pad(inp["age"]), pad(inp["days"]),
             model.init_cache(b, l))
  assert out.cache[0].k.shape == (b, l, 2, 8)
  for r in range(b):
    np.testing.assert_allclose(out.logits[r, :lengths[r]], full_BxLxV[r, :lengths[r]],
                               atol=2e-5, rtol=1e-4)
  cache, cur = out.cache, lengths.copy()
  for n in (1, 1, 1, 2, 2, 1):
    idx_BxN = cur[:, None] + np.arange(n)[None, :]
    take = lambda x: jnp.asarray(np.take_along_axis(np.asarray(x), idx_BxN, axis=1))
    out = step(model, take(inp["tokens"]), jnp.asarray(idx_BxN, jnp.int32), take(inp["age"]),
               take(inp["days"]), cache)
    want = np.take_along_axis(full_BxLxV, idx_BxN[..., None], axis=1)
    np.testing.assert_allclose(out.logits, want, atol=2e-5, rtol=1e-4)
    cache, cur = out.cache, cur + n
  assert cur.max() == l


def test_from_embeddings_equals_call():
  segs = np.array([[1] * 7 + [2] * 5, [1] * 9 + [0] * 3], np.int32)
  cfg = _cfg(time_embedding="age_and_days")
  inp = _inputs(segs)
  model = Transformer(cfg, rngs=nnx.Rngs(5))
  x = model.embed(inp["tokens"], inp["age"], inp["days"])
  a = _run(model, inp)
  b = model(None, inp["segment_ids"], inp["positions"], embeddings_BxLxD=x)
  np.testing.assert_array_equal(a.logits, b.logits)
  np.testing.assert_array_equal(a.hidden, b.hidden)

  fm = heads.FinetuneModel(cfg, heads.HeadConfig(num_outputs=3, hidden_dim=8, dropout_rate=0.3),
                           rngs=nnx.Rngs(6))
  length = jnp.array([7, 9], jnp.int32)
  args = (inp["segment_ids"], inp["positions"], length)
  x = fm.backbone.embed(inp["tokens"], inp["age"], inp["days"])
  call = nnx.jit(lambda m, rng: m(inp["tokens"], inp["segment_ids"], inp["positions"],
                                  inp["age"], inp["days"], length, dropout_rng=rng))
  from_emb = nnx.jit(lambda m, x, rng: m.from_embeddings(x, *args, dropout_rng=rng))
  for rng in (None, jax.random.PRNGKey(2)):
    out = call(fm, rng)
    assert out.shape == (2, 3)
    np.testing.assert_allclose(out, from_emb(fm, x, rng), rtol=1e-6, atol=1e-6)
  # The representation is the backbone's hidden state at the last real token.
  h = nnx.jit(lambda m: _run(m.backbone, inp).hidden)(fm)
  rep = nnx.jit(lambda m: m.represent(inp["tokens"], inp["segment_ids"], inp["positions"],
                                      inp["age"], inp["days"], length))(fm)
  np.testing.assert_allclose(rep, np.stack([h[0, 6], h[1, 8]]), rtol=1e-6, atol=1e-6)
  # Attribution differentiates the outputs w.r.t. the embeddings.
  g = jax.jit(jax.grad(lambda x: fm.from_embeddings(x, *args)[:, 0].sum()))(x)
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).sum() > 0


def test_dropout_takes_the_key_at_call_time():
  cfg = _cfg(dropout_rate=0.3)
  model = Transformer(cfg, rngs=nnx.Rngs(7))
  assert isinstance(model.layer_0.dropout, nnx.Dropout)
  graphdef, state = nnx.split(model)
  # No RNG state: the model is rebuilt from its parameters alone, as the trainer does under jit.
  assert len(jax.tree.leaves(state)) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  inp = _inputs(np.ones((B, L), np.int32))
  f = jax.jit(lambda p, k: _run_rng(nnx.merge(graphdef, p), inp, k))
  no_dropout = Transformer(dataclasses.replace(cfg, dropout_rate=0.0), rngs=nnx.Rngs(7))
  run = nnx.jit(_run)
  off = np.asarray(run(no_dropout, inp).hidden)
  np.testing.assert_array_equal(run(model, inp).hidden, off)  # no key: dropout off, bitwise
  k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
  on1 = np.asarray(f(params, k1))
  np.testing.assert_array_equal(on1, f(params, k1))
  assert not np.allclose(on1, off) and not np.allclose(on1, f(params, k2))
  # The head drops its hidden features with its own part of the key.
  head = heads.Head(8, heads.HeadConfig(num_outputs=2, hidden_dim=64, dropout_rate=0.5),
                    rngs=nnx.Rngs(0))
  x_BxD = jnp.ones((4, 8))
  assert not np.allclose(head(x_BxD, dropout_rng=k1), head(x_BxD))
  np.testing.assert_array_equal(head(x_BxD, dropout_rng=None), head(x_BxD))


def _run_rng(model: Transformer, inp, rng):
  return model(inp["tokens"], inp["segment_ids"], inp["positions"], inp["age"], inp["days"],
               dropout_rng=rng).hidden


def test_call_argument_errors():
  model = Transformer(_cfg(), rngs=nnx.Rngs(0))
  inp = _inputs(np.ones((B, L), np.int32))
  x = model.embed(inp["tokens"], inp["age"], inp["days"])
  seg, pos = inp["segment_ids"], inp["positions"]
  with pytest.raises(ValueError, match="pass tokens or embeddings"):
    model(None, seg, pos)
  with pytest.raises(ValueError, match="replaces tokens, age and days"):
    model(inp["tokens"], seg, pos, embeddings_BxLxD=x)
  with pytest.raises(ValueError, match="segment_ids must be None with a cache"):
    model(inp["tokens"], seg, pos, inp["age"], cache=model.init_cache(B, L))
  with pytest.raises(ValueError, match="segment_ids are required"):
    model(inp["tokens"], None, pos, inp["age"])


def _reference_attention(q, k, v, mask, is_causal):
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                      implementation="xla")


@pytest.mark.parametrize("chunk", [4, 5, 64])  # 4 and 5 chunk the 13 queries; 64 does not
def test_chunked_causal_attention_matches_full_attention(monkeypatch, chunk):
  # The CPU path skips the key blocks after each query chunk; values and gradients must equal
  # one dense causal attention with the packed-segment mask (padding rows included).
  monkeypatch.setattr(transformer, "CAUSAL_CHUNK", chunk)
  b, l, h, kh, e = 2, 13, 4, 2, 8
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(b, l, n, e)), jnp.float32) for n in (h, kh, kh))
  seg = jnp.asarray([[1] * 6 + [2] * 7, [1] * 9 + [0] * 4], jnp.int32)
  mask = transformer.segment_mask(seg, seg)

  def loss(fn, q, k, v):
    y = fn(q, k, v, mask, is_causal=True)
    return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)))

  got = transformer.attend(q, k, v, mask, is_causal=True)
  np.testing.assert_allclose(got, _reference_attention(q, k, v, mask, True), atol=1e-5,
                             rtol=1e-5)
  g_got = jax.grad(lambda *a: loss(transformer.attend, *a), argnums=(0, 1, 2))(q, k, v)
  g_ref = jax.grad(lambda *a: loss(_reference_attention, *a), argnums=(0, 1, 2))(q, k, v)
  for a, r in zip(g_got, g_ref):
    np.testing.assert_allclose(a, r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("l", [1, 2, transformer.SMALL_QUERY + 3])  # small path, then dense
def test_cache_attention_matches_reference(l):
  b, s, h, kh, e = 3, 11, 4, 2, 8
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(b, l, h, e)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(b, s, kh, e)), jnp.float32) for _ in range(2))
  positions = jnp.asarray(np.array([0, 3, 7])[:, None] + np.arange(l)[None, :], jnp.int32)
  mask = transformer.cache_mask(positions, s)
  np.testing.assert_allclose(transformer.attend(q, k, v, mask, is_causal=False),
                             _reference_attention(q, k, v, mask, False), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_forward_at_one_slot_equals_the_full_forward_there(num_layers):
  """at_B computes the last block at one slot per row: same hidden state, same gradients."""
  model = Transformer(_cfg(num_layers=num_layers), rngs=nnx.Rngs(3))
  inp = _inputs(np.array([[1] * 7 + [0] * 5, [1] * 4 + [2] * 8]))  # padded; two segments
  at_B = jnp.array([6, 9], jnp.int32)
  x = model.embed(inp["tokens"], inp["age"], inp["days"])

  def full(x):
    h = model(None, inp["segment_ids"], inp["positions"], embeddings_BxLxD=x,
              return_logits=False).hidden
    return jnp.take_along_axis(h, at_B[:, None, None], axis=1)

  def at(x):
    return model(None, inp["segment_ids"], inp["positions"], embeddings_BxLxD=x,
                 return_logits=False, at_B=at_B).hidden

  np.testing.assert_allclose(at(x), full(x), rtol=1e-5, atol=1e-6)
  g_full, g_at = (jax.grad(lambda x, f=f: (f(x) ** 2).sum())(x) for f in (full, at))
  np.testing.assert_allclose(g_at, g_full, rtol=1e-3, atol=1e-4)
  assert np.all(np.asarray(g_at)[1, :4] == 0.0)  # slot 9 is in segment 2: segment 1 unseen
  assert np.all(np.asarray(g_at)[0, 7:] == 0.0)  # nothing after the slot


def test_finetune_model_pools_the_last_slot_as_the_full_forward_does():
  cfg = _cfg()
  model = heads.FinetuneModel(cfg, heads.HeadConfig(num_outputs=3, hidden_dim=8),
                              rngs=nnx.Rngs(0))
  inp = _inputs(np.array([[1] * 9 + [0] * 3, [1] * 12]))
  length_B = jnp.array([9, 12], jnp.int32)
  out = model(inp["tokens"], inp["segment_ids"], inp["positions"], inp["age"], inp["days"],
              length_B)
  h = model.backbone(inp["tokens"], inp["segment_ids"], inp["positions"], inp["age"],
                     inp["days"], return_logits=False).hidden
  ref = model.head(heads.pool(h, inp["segment_ids"], length_B, "last"))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
