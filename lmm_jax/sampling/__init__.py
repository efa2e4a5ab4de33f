"""Generative simulation: KV-cache sampling of patient futures, zero-shot cost and condition
prediction from them, synthetic MEDS patients and their memorization audit (docs/generation.md)."""

from lmm_jax.sampling.decode import (Futures, History, NO_HORIZON, STOP_REASONS, Sampler,
                                     SamplingConfig, decode_step, filter_logits, generate_cached,
                                     generate_uncached, init_cache, prefill, row_keys,
                                     sample_tokens)

__all__ = ["Futures", "History", "NO_HORIZON", "STOP_REASONS", "Sampler", "SamplingConfig",
           "decode_step", "filter_logits", "generate_cached",
           "generate_uncached", "init_cache", "prefill", "row_keys", "sample_tokens"]
