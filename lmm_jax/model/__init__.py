"""The lmm_jax backbones (Flax NNX), their registry and the fine-tuning heads."""

from lmm_jax.model import registry
from lmm_jax.model.backbone import Backbone, ModelOutput
from lmm_jax.model.transformer import (Attention, Block, Cache, LayerCache, MLP, RMSNorm,
                                       TimeEmbedding, Transformer, TransformerConfig, attend,
                                       cache_mask, count_params, flops_per_token, init_cache,
                                       rotary, segment_mask)

__all__ = ["Attention", "Backbone", "Block", "Cache", "LayerCache", "MLP", "ModelOutput",
           "RMSNorm", "TimeEmbedding", "Transformer", "TransformerConfig", "attend", "cache_mask",
           "count_params", "flops_per_token", "init_cache", "registry", "rotary", "segment_mask"]
