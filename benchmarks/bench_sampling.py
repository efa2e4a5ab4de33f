r"""Sampling speed: KV-cache decoding vs re-running the full forward pass for every token, and
the shared prefill cache vs one copy of it per future.

  python benchmarks/bench_sampling.py --preset=demo --contexts=512,2048 --num_samples=20
  python benchmarks/bench_sampling.py --contexts=512 --num_samples=16 --patients=20 \
      --new_tokens=128 --uncached_tokens=2        # the demo main job's zero-shot batch

A randomly initialized model of a pretraining preset's shape (experiments/configs/pretrain.py) and a
5,000-token vocabulary; each patient's history fills the context, N futures share its prefill and
each generates --new_tokens tokens (no end or horizon stop, so every row runs the whole budget).
The uncached sampler recomputes the forward pass over the whole [history + new tokens] buffer at
every step (what peers without a cache do); it is timed over --uncached_tokens steps (a shorter
buffer than the cached run's, which favours it). The copied-prefix sampler is the same model
with the cache layout the sampler had before `SharedPrefixCache`: the prefill's keys and values
repeated N times, so every decode step reads each history N times. Prints tokens/s, patients/s
(N futures each) and the speed-ups per generated token. Compile time is excluded (one warm-up
call per configuration).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
from experiments.configs import common
from experiments.configs import pretrain as pretrain_config
from lmm_jax.model import registry
from lmm_jax.model import transformer
from lmm_jax.sampling import decode

VOCAB = 5000


class CopiedPrefix(transformer.Transformer):
  """The transformer with one copy of the prefill cache per continuation (the former layout)."""

  def fork_cache(self, cache, lengths_B, num_samples, new_tokens):
    del lengths_B  # slot p = position p in every copy
    grow = lambda x: jnp.pad(jnp.repeat(x, num_samples, axis=0),
                             ((0, 0), (0, new_tokens), (0, 0), (0, 0)))
    return tuple(transformer.LayerCache(grow(c.k), grow(c.v)) for c in cache)


def _histories(num: int, length: int, seed: int) -> list[decode.History]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    tokens = np.concatenate([[1], rng.integers(3, VOCAB, size=length - 1)]).astype(np.int32)
    days = np.cumsum(rng.integers(0, 5, size=length)).astype(np.float32)
    out.append(decode.History(tokens, (50.0 + days / 365.25).astype(np.float32), days))
  return out


def _time(sampler: decode.Sampler, hist, repeats: int) -> tuple[float, int]:
  sampler.generate(hist, seed=0)  # compile
  t0 = time.perf_counter()
  tokens = 0
  for r in range(repeats):
    out = sampler.generate(hist, seed=r + 1)
    tokens += int(out.num_tokens.sum())
  return (time.perf_counter() - t0) / repeats, tokens // repeats


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="demo", choices=common.PRESETS)
  p.add_argument("--contexts", default="512,2048")
  p.add_argument("--num_samples", type=int, default=20)
  p.add_argument("--patients", type=int, default=2)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--uncached_tokens", type=int, default=4)
  p.add_argument("--repeats", type=int, default=2)
  a = p.parse_args()

  cfg = pretrain_config.get_config(a.preset)
  with cfg.unlocked():
    cfg.model.dtype = "float32" if jax.default_backend() == "cpu" else cfg.model.dtype
    cfg.model.attention_impl = "xla"
  padded = -(-VOCAB // 128) * 128
  model_cfg = registry.make_config(cfg.model, VOCAB, padded)
  model = registry.build(model_cfg, nnx.Rngs(0))
  copied_model = CopiedPrefix(model_cfg, rngs=nnx.Rngs(0))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  gap = np.zeros(VOCAB, np.float32)
  dev = jax.devices()[0]
  print(f"device: {dev.device_kind} x{jax.device_count()} ({jax.default_backend()}), host "
        f"{platform.processor() or platform.machine()} with {os.cpu_count()} cores; model preset "
        f"{a.preset}: {n_params / 1e6:.2f}M parameters, {cfg.model.num_layers} layers, d_model "
        f"{cfg.model.d_model}; N={a.num_samples} futures x {a.patients} patients, "
        f"{a.new_tokens} new tokens")
  print("| context | cached tok/s | cached patients/s | copied-prefix tok/s | shared vs copied "
        "| uncached tok/s | cached vs uncached |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for ctx in (int(c) for c in a.contexts.split(",")):
    hist = _histories(a.patients, ctx, seed=ctx)
    sc = decode.SamplingConfig(num_samples=a.num_samples, max_new_tokens=a.new_tokens,
                               stop_at_eos=False)
    cached = decode.Sampler(model, gap, -1, sc, context_len=ctx)
    t_c, tok_c = _time(cached, hist, a.repeats)
    copied = decode.Sampler(copied_model, gap, -1, sc, context_len=ctx)
    t_k, tok_k = _time(copied, hist, a.repeats)
    sc_u = decode.SamplingConfig(num_samples=a.num_samples, max_new_tokens=a.uncached_tokens,
                                 stop_at_eos=False)
    plain = decode.Sampler(model, gap, -1, sc_u, context_len=ctx, use_cache=False)
    t_u, tok_u = _time(plain, hist, 1)
    tps_c, tps_k, tps_u = tok_c / t_c, tok_k / t_k, tok_u / t_u
    print(f"| {ctx} | {tps_c:,.0f} | {a.patients / t_c:.3f} | {tps_k:,.0f} | "
          f"{tps_c / tps_k:.2f}x | {tps_u:,.1f} | {tps_c / tps_u:.1f}x |", flush=True)


if __name__ == "__main__":
  main()
