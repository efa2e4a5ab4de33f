"""The lmm_jax transformer (Flax NNX)."""

from lmm_jax.model.transformer import (Attention, Block, MLP, RMSNorm, TimeEmbedding, Transformer,
                                       TransformerConfig, attend, count_params, flops_per_token,
                                       rotary, segment_mask)

__all__ = ["Attention", "Block", "MLP", "RMSNorm", "TimeEmbedding", "Transformer",
           "TransformerConfig", "attend", "count_params", "flops_per_token", "rotary",
           "segment_mask"]
