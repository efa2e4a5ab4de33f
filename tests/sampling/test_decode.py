"""KV-cache decoding: same logits as the full forward pass, seeded sampling, exact horizon stops."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from lmm_jax import sharding
from lmm_jax.model import Transformer, TransformerConfig
from lmm_jax.sampling import decode

V = 50
EOS = 2
GAP_IDS = (10, 11, 12)              # fake time-gap tokens: 7, 30 and 100 days
GAP_DAYS = (7.0, 30.0, 100.0)


def _model(**kw) -> Transformer:
  base = dict(vocab_size=V, padded_vocab_size=64, num_layers=1, d_model=32, num_heads=4,
              num_kv_heads=2, head_dim=8, mlp_dim=64, num_time_features=8)
  base.update(kw)
  return Transformer(TransformerConfig(**base), rngs=nnx.Rngs(0))


def _gap_table() -> np.ndarray:
  gap = np.zeros(V, np.float32)
  gap[list(GAP_IDS)] = GAP_DAYS
  return gap


def _history(rng: np.random.Generator, n: int) -> decode.History:
  tokens = np.concatenate([[1], rng.integers(3, V, size=n - 1)]).astype(np.int32)
  days = np.cumsum(rng.integers(0, 20, size=n)).astype(np.float32)
  days -= days[0]
  return decode.History(tokens, (50.0 + days / 365.25).astype(np.float32), days)


def test_cached_logits_match_full_forward():
  model = _model(num_layers=2, num_kv_heads=2)  # grouped-query attention
  rng = np.random.default_rng(0)
  b, l, p = 3, 20, 7  # prefill p tokens (right-padded rows of different lengths), decode the rest
  tokens = rng.integers(3, V, size=(b, l)).astype(np.int32)
  days = np.cumsum(rng.integers(0, 30, size=(b, l)), axis=1).astype(np.float32)
  age = (40.0 + days / 365.25).astype(np.float32)
  age[2] = -1.0  # unknown birth date
  seg = np.ones((b, l), np.int32)
  pos = np.broadcast_to(np.arange(l, dtype=np.int32), (b, l))
  full = jax.jit(lambda *a: model(*a).logits)(jnp.asarray(tokens), jnp.asarray(seg),
                                               jnp.asarray(pos), jnp.asarray(age),
                                               jnp.asarray(days))
  lengths = np.array([p, p - 3, p - 1], np.int32)
  pad = lambda x: np.where(np.arange(p)[None] < lengths[:, None], x[:, :p], 0).astype(x.dtype)
  prefill = jax.jit(lambda *a: decode.prefill(model, *a, cache_len=l))
  last, cache = prefill(jnp.asarray(pad(tokens)), jnp.asarray(pad(age)), jnp.asarray(pad(days)),
                        jnp.asarray(lengths))
  np.testing.assert_allclose(last, full[np.arange(b), lengths - 1], atol=2e-5, rtol=1e-4)
  cur = lengths.copy()
  step = jax.jit(lambda c, t, a, d, q: decode.decode_step(model, t, a, d, q, c))
  while cur.min() < l:
    idx = np.minimum(cur, l - 1)
    logits, cache = step(cache, jnp.asarray(tokens[np.arange(b), idx]),
                         jnp.asarray(age[np.arange(b), idx]), jnp.asarray(days[np.arange(b), idx]),
                         jnp.asarray(idx))
    live = cur < l
    np.testing.assert_allclose(np.asarray(logits)[live], np.asarray(full)[np.arange(b), idx][live],
                               atol=2e-5, rtol=1e-4)
    cur = cur + 1


def test_forked_cache_continues_each_row_as_the_full_forward_does():
  # N continuations of each prefilled row, each decoding its own tokens: the logits of every
  # step equal the full forward pass of (history + that continuation), and the prefill is kept
  # once per row (not N times).
  model = _model(num_layers=2, num_kv_heads=2)
  rng = np.random.default_rng(5)
  rows, n, p, t = 2, 3, 8, 6
  lengths = np.array([p, p - 3], np.int32)
  hist = rng.integers(3, V, size=(rows, p)).astype(np.int32)
  cont = rng.integers(3, V, size=(rows * n, t)).astype(np.int32)
  pad = lambda x: np.where(np.arange(p)[None] < lengths[:, None], x, 0).astype(x.dtype)
  zeros = np.zeros((rows, p), np.float32)
  _, cache = jax.jit(lambda *a: decode.prefill(model, *a, cache_len=p))(
      jnp.asarray(pad(hist)), jnp.asarray(zeros), jnp.asarray(zeros), jnp.asarray(lengths))
  cache = model.fork_cache(cache, jnp.asarray(lengths), n, t)
  assert cache[0].prefix_k.shape[0] == rows and cache[0].k.shape[:2] == (rows * n, t)
  step = jax.jit(lambda c, tok, q: decode.decode_step(model, tok, jnp.zeros(tok.shape),
                                                      jnp.zeros(tok.shape), q, c))
  expected = []
  for r in range(rows * n):
    row = r // n
    seq = np.concatenate([hist[row, :lengths[row]], cont[r]])[None]
    seg, pos = np.ones_like(seq), np.arange(seq.shape[1], dtype=np.int32)[None]
    zs = np.zeros(seq.shape, np.float32)
    full = np.asarray(model(jnp.asarray(seq), jnp.asarray(seg), jnp.asarray(pos), jnp.asarray(zs),
                            jnp.asarray(zs)).logits)[0]
    expected.append(full[lengths[row]:lengths[row] + t])
  positions = np.repeat(lengths, n)
  for i in range(t):
    logits, cache = step(cache, jnp.asarray(cont[:, i]), jnp.asarray(positions + i))
    for r in range(rows * n):
      np.testing.assert_allclose(np.asarray(logits)[r], expected[r][i], atol=2e-5, rtol=1e-4)


def _sampler(model, n=4, t=24, **kw) -> decode.Sampler:
  sc = decode.SamplingConfig(num_samples=n, max_new_tokens=t, **kw)
  return decode.Sampler(model, _gap_table(), EOS, sc, context_len=32)


def test_sampling_reproducible_by_seed_and_batch_independent():
  model = _model()
  rng = np.random.default_rng(1)
  hist = [_history(rng, n) for n in (5, 12, 9)]
  s = _sampler(model, top_k=20, top_p=0.9, temperature=0.8)
  a = s.generate(hist, seed=3)
  b = s.generate(hist, seed=3)
  c = s.generate(hist, seed=4)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)
  # The futures of a patient are the same alone (other prefill length, no neighbours).
  alone = s.generate(hist[1:2], patient_index=[1], seed=3, prefill_len=16)
  np.testing.assert_array_equal(alone.tokens, a.tokens[a.rows_of(1)])
  # The N futures of one patient differ from each other.
  assert len({tuple(r) for r in a.tokens[a.rows_of(0)]}) > 1


def test_cached_and_uncached_sample_the_same_tokens():
  model = _model()
  rng = np.random.default_rng(2)
  hist = [_history(rng, n) for n in (6, 11)]
  sc = decode.SamplingConfig(num_samples=3, max_new_tokens=16, temperature=1.0)
  cached = decode.Sampler(model, _gap_table(), EOS, sc, context_len=16).generate(hist, seed=0)
  plain = decode.Sampler(model, _gap_table(), EOS, sc, context_len=16,
                         use_cache=False).generate(hist, seed=0)
  np.testing.assert_array_equal(cached.tokens, plain.tokens)
  np.testing.assert_array_equal(cached.num_tokens, plain.num_tokens)


def test_top_k_and_top_p_filters():
  logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
  k2 = decode.filter_logits(logits, 1.0, 2, 1.0)
  assert np.isfinite(np.asarray(k2)).tolist() == [True, True, False, False]
  p = decode.filter_logits(logits, 1.0, 0, 0.75)  # 0.5 + 0.3 reach 0.75
  assert np.isfinite(np.asarray(p)).tolist() == [True, True, False, False]
  p1 = decode.filter_logits(logits, 1.0, 0, 0.4)
  assert np.isfinite(np.asarray(p1)).tolist() == [True, False, False, False]


def test_horizon_stopping_is_exact():
  # Logits patched so that one 30-day gap token always wins. With a horizon of 100 days the clock
  # reads 30, 60, 90 and then 120 >= 100: exactly 3 gaps are kept; at 90 days, 2 are.
  model = _model()
  gap_id = GAP_IDS[1]
  orig_logits = Transformer.logits

  def fake_logits(self, h_BxLxD):
    out = orig_logits(self, h_BxLxD)
    return out + jnp.where(jnp.arange(out.shape[-1]) == gap_id, 1e4, 0.0)[None, None, :]

  Transformer.logits = fake_logits
  try:
    rng = np.random.default_rng(3)
    hist = [_history(rng, 6), _history(rng, 6), _history(rng, 6)]
    hist[0].horizon_days = 100.0   # 30, 60, 90 kept; 120 crosses
    hist[1].horizon_days = 90.0    # 30, 60 kept; 90 reaches the horizon
    hist[2].horizon_days = 1e6     # budget
    out = _sampler(model, n=2, t=10).generate(hist, seed=0)
  finally:
    Transformer.logits = orig_logits
  np.testing.assert_array_equal(out.num_tokens, [3, 3, 2, 2, 10, 10])
  np.testing.assert_array_equal(out.stop_reason, [1, 1, 1, 1, 0, 0])
  assert np.all(out.tokens[:2, :3] == gap_id) and np.all(out.tokens[:2, 3:] == 0)
  np.testing.assert_allclose(out.clock[0, :3], [30.0, 60.0, 90.0])
  np.testing.assert_allclose(out.clock[4], 30.0 * np.arange(1, 11))


def test_data_parallel_on_mesh_matches_single_device():
  model = _model()
  rng = np.random.default_rng(4)
  hist = [_history(rng, n) for n in (5, 9, 7)]
  single = _sampler(model, n=2, t=12).generate(hist, seed=5)
  mesh = sharding.make_mesh((-1, 2, 1))
  decode.replicate_params(model, mesh)
  sc = decode.SamplingConfig(num_samples=2, max_new_tokens=12)
  s = decode.Sampler(model, _gap_table(), EOS, sc, context_len=32, mesh=mesh)
  assert s.pad_patients(3) == 8
  multi = s.generate(hist, seed=5)
  np.testing.assert_array_equal(single.tokens, multi.tokens)


def test_banned_tokens_are_never_sampled_cached_or_not():
  model = _model()
  rng = np.random.default_rng(5)
  hist = [_history(rng, n) for n in (6, 11)]
  allowed = np.array([EOS, *GAP_IDS, 20, 21, 22])
  banned = np.setdiff1d(np.arange(V), allowed)     # PAD (0) among them
  sc = decode.SamplingConfig(num_samples=8, max_new_tokens=16, temperature=1.5)
  free = decode.Sampler(model, _gap_table(), EOS, sc, context_len=16).generate(hist, seed=0)
  assert np.isin(free.tokens[free.tokens > 0], banned).any()   # the model does sample them
  cached = decode.Sampler(model, _gap_table(), EOS, sc, context_len=16,
                          banned_ids=banned).generate(hist, seed=0)
  plain = decode.Sampler(model, _gap_table(), EOS, sc, context_len=16, use_cache=False,
                         banned_ids=banned).generate(hist, seed=0)
  np.testing.assert_array_equal(cached.tokens, plain.tokens)
  for r in range(cached.tokens.shape[0]):
    gen = cached.tokens[r, :cached.num_tokens[r]]
    assert gen.size and np.isin(gen, allowed).all()      # no PAD inside a future either
  greedy = decode.SamplingConfig(num_samples=1, max_new_tokens=8, temperature=0.0)
  g = decode.Sampler(model, _gap_table(), EOS, greedy, context_len=16,
                     banned_ids=banned).generate(hist, seed=0)
  assert np.isin(g.tokens[g.tokens > 0], allowed).all()
