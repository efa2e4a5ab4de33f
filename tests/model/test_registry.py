"""The model registry: configs from config.model, building by config type, a second variant that
fine-tuning and sampling take with no other change."""

from __future__ import annotations

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments.configs import common
from experiments.configs import pretrain as pretrain_config
from lmm_jax.model import ModelOutput, Transformer, TransformerConfig, heads, registry
from lmm_jax.sampling import decode
from lmm_jax.tasks import pretrain

V = 40


@dataclasses.dataclass(frozen=True)
class MeanConfig:
  vocab_size: int
  padded_vocab_size: int
  d_model: int = 16


class CausalMean(nnx.Module):
  """A tiny backbone: h[p] = mean of the input embeddings at positions <= p of p's sequence."""

  def __init__(self, cfg: MeanConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embedding = nnx.Param(jax.random.normal(rngs.params(),
                                                 (cfg.padded_vocab_size, cfg.d_model)))
    self.out = nnx.Param(jax.random.normal(rngs.params(), (cfg.d_model, cfg.padded_vocab_size)))

  def embed(self, tokens_BxL, age_BxL=None, days_BxL=None):
    del days_BxL
    x_BxLxD = jnp.take(self.embedding[...], tokens_BxL, axis=0)
    return x_BxLxD if age_BxL is None else x_BxLxD + (age_BxL / 100.0)[..., None]

  def output_head(self):
    return self.out[...], jnp.zeros((self.out.shape[1],), jnp.float32)

  def logits(self, h_BxLxD):
    return h_BxLxD @ self.out[...]

  def init_cache(self, batch: int, length: int):
    return jnp.zeros((batch, length, self.cfg.d_model))

  def fork_cache(self, cache, lengths_B, num_samples, new_tokens):
    del lengths_B  # the plain way: a copy of the prefill per continuation, slot p = position p
    cache = jnp.repeat(cache, num_samples, axis=0)
    return jnp.pad(cache, ((0, 0), (0, new_tokens), (0, 0)))

  def __call__(self, tokens_BxL, segment_ids_BxL, positions_BxL, age_BxL=None, days_BxL=None, *,
               embeddings_BxLxD=None, cache=None, dropout_rng=None, return_logits=True,
               at_B=None):
    del dropout_rng
    x_BxLxD = (self.embed(tokens_BxL, age_BxL, days_BxL) if embeddings_BxLxD is None
               else embeddings_BxLxD)
    if cache is None:
      l = x_BxLxD.shape[1]
      causal_LxL = jnp.arange(l)[:, None] >= jnp.arange(l)[None, :]
      w_BxLxS = ((segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])
                 & causal_LxL[None]).astype(jnp.float32)
      keys_BxSxD = x_BxLxD
    else:
      cache = jax.vmap(lambda c, u, s: jax.lax.dynamic_update_slice(c, u, (s, 0)))(
          cache, x_BxLxD, positions_BxL[:, 0])
      keys_BxSxD = cache
      w_BxLxS = (jnp.arange(cache.shape[1])[None, None, :]
                 <= positions_BxL[:, :, None]).astype(jnp.float32)
    h_BxLxD = jnp.einsum("bls,bsd->bld", w_BxLxS, keys_BxSxD) / w_BxLxS.sum(-1, keepdims=True)
    if at_B is not None:
      h_BxLxD = jnp.take_along_axis(h_BxLxD, at_B[:, None, None], axis=1)
    return ModelOutput(self.logits(h_BxLxD) if return_logits else None, h_BxLxD, cache)


@pytest.fixture
def with_mean_model(monkeypatch):
  monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
  registry.register("causal_mean", MeanConfig, CausalMean)


def test_make_config_picks_the_entry_and_keeps_its_fields(with_mean_model):
  model_cfg = ml_collections.ConfigDict({"num_layers": 3, "d_model": 8, "head_dim": 4,
                                         "num_heads": 2, "num_kv_heads": 2, "other": "x"})
  cfg = registry.make_config(model_cfg, V, 64)
  assert cfg == TransformerConfig(vocab_size=V, padded_vocab_size=64, num_layers=3, d_model=8,
                                  head_dim=4, num_heads=2, num_kv_heads=2)
  model_cfg.name = "causal_mean"
  assert registry.make_config(model_cfg, V, 48) == MeanConfig(V, 48, d_model=8)
  assert registry.make_config({"name": "causal_mean"}, V, V) == MeanConfig(V, V)
  with pytest.raises(ValueError, match=r"unknown model name 'gpt5'.*\['causal_mean', "
                                       r"'transformer'\]"):
    registry.make_config({"name": "gpt5"}, V, V)
  with pytest.raises(ValueError, match="already registered"):
    registry.register("transformer", MeanConfig, CausalMean)


@pytest.mark.parametrize("preset", common.PRESETS)
def test_make_config_takes_every_field_of_the_preset(preset):
  model_cfg = pretrain_config.get_config(preset).model
  fields = {k: v for k, v in model_cfg.to_dict().items() if k != "name"}
  assert (registry.make_config(model_cfg, 5000, 5120)
          == TransformerConfig(vocab_size=5000, padded_vocab_size=5120, **fields))
  assert pretrain.backbone_config(model_cfg, 5000, 128) == registry.make_config(
      model_cfg, 5000, 5120)


def test_build_by_config_type():
  cfg = TransformerConfig(vocab_size=V, padded_vocab_size=V, num_layers=1, d_model=16,
                          num_heads=2, num_kv_heads=2, head_dim=8, mlp_dim=32,
                          num_time_features=8)
  built = registry.build(cfg, nnx.Rngs(0))
  direct = Transformer(cfg, rngs=nnx.Rngs(0))
  assert isinstance(built, Transformer) and registry.name_of(cfg) == "transformer"
  for a, b in zip(jax.tree.leaves(nnx.state(built)), jax.tree.leaves(nnx.state(direct))):
    np.testing.assert_array_equal(a, b)  # same initialization, same RNG stream
  with pytest.raises(ValueError, match="no registered model takes a MeanConfig"):
    registry.build(MeanConfig(V, V), nnx.Rngs(0))


def _rows(rng: np.random.Generator, b: int, l: int):
  length = rng.integers(3, l + 1, size=b).astype(np.int32)
  seg = (np.arange(l)[None, :] < length[:, None]).astype(np.int32)
  tokens = (rng.integers(3, V, size=(b, l)) * seg).astype(np.int32)
  pos = (np.arange(l)[None, :] * seg).astype(np.int32)
  age = (50.0 * seg).astype(np.float32)
  return (jnp.asarray(tokens), jnp.asarray(seg), jnp.asarray(pos), jnp.asarray(age),
          jnp.asarray(age), jnp.asarray(length))


def test_finetune_model_builds_a_registered_variant(with_mean_model):
  cfg = registry.make_config({"name": "causal_mean", "d_model": 8}, V, V)
  model = heads.FinetuneModel(cfg, heads.HeadConfig(num_outputs=2, pooling="mean"),
                              rngs=nnx.Rngs(0))
  assert isinstance(model.backbone, CausalMean)
  assert set(nnx.to_pure_dict(nnx.state(model, nnx.Param))) == {"backbone", "head"}
  tokens, seg, pos, age, days, length = _rows(np.random.default_rng(0), 3, 10)
  out = model(tokens, seg, pos, age, days, length)
  assert out.shape == (3, 2) and np.all(np.isfinite(np.asarray(out)))
  x = model.backbone.embed(tokens, age, days)
  np.testing.assert_allclose(model.from_embeddings(x, seg, pos, length), out, rtol=1e-6)


def test_sampler_runs_a_registered_variant(with_mean_model):
  model = registry.build(registry.make_config({"name": "causal_mean"}, V, V), nnx.Rngs(1))
  rng = np.random.default_rng(1)
  hist = []
  for n in (4, 9):
    days = np.cumsum(rng.integers(0, 20, size=n)).astype(np.float32)
    hist.append(decode.History(np.concatenate([[1], rng.integers(3, V, size=n - 1)]).astype(
        np.int32), (50.0 + days / 365.25).astype(np.float32), days - days[0]))
  gap = np.zeros(V, np.float32)
  gap[10] = 30.0
  sc = decode.SamplingConfig(num_samples=2, max_new_tokens=8)
  cached = decode.Sampler(model, gap, 2, sc, context_len=16).generate(hist, seed=0)
  plain = decode.Sampler(model, gap, 2, sc, context_len=16, use_cache=False).generate(hist, seed=0)
  assert cached.tokens.shape == (4, 8) and cached.num_tokens.min() > 0
  np.testing.assert_array_equal(cached.tokens, plain.tokens)
  np.testing.assert_array_equal(cached.num_tokens, plain.num_tokens)
