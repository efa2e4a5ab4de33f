"""What a backbone (a registered model variant) provides to training, fine-tuning and sampling.

    out = model(tokens, segment_ids, positions, age, days)             # training, scoring
    out = model(None, segment_ids, positions, embeddings_BxLxD=x)      # attribution from embeddings
    out = model(tokens, None, positions, age, days, cache=cache)       # prefill / one decode step
    out = model(tokens, segment_ids, positions, age, days, at_B=idx_B)  # hidden [B,1,D] at idx_B
    out.logits, out.hidden, out.cache

One `__call__` serves all four, so a variant's math is written once. With a cache, each row holds
one sequence whose token at position p occupies cache slot p: the L new tokens of a row must have
consecutive positions, they are written at slot positions[:, 0] onwards, and a query at position p
sees slots <= p. Right-padded rows therefore prefill exactly: slots the padding filled are
overwritten by the next decode step before any query can see them. `fork_cache` turns a prefill's
cache into the cache of N continuations of each row (N sampled futures of one history), which the
same `__call__` then decodes; how the prefill is shared among them is the backbone's business.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax


class ModelOutput(NamedTuple):
  logits: jax.Array | None   # float32 [B,L,V]; None with return_logits=False
  hidden: jax.Array          # final hidden states [B,L,D]
  cache: Any                 # the updated cache when one was passed, else None


class Backbone(Protocol):
  """The interface that `FinetuneModel` and `lmm_jax.sampling.decode` rely on.

  `cfg` has at least vocab_size, padded_vocab_size and d_model. A cache is any pytree whose leaves
  have the batch as their leading axis.
  """
  cfg: Any

  def __call__(self, tokens_BxL: jax.Array | None, segment_ids_BxL: jax.Array | None,
               positions_BxL: jax.Array, age_BxL: jax.Array | None = None,
               days_BxL: jax.Array | None = None, *, embeddings_BxLxD: jax.Array | None = None,
               cache: Any = None, dropout_rng: jax.Array | None = None,
               return_logits: bool = True, at_B: jax.Array | None = None) -> ModelOutput:
    """With at_B (int32[B], no cache): the outputs at slot at_B of each row only, [B,1,...]
    (a pooled head's forward; a backbone may skip the work the other slots need no more)."""
    ...

  def embed(self, tokens_BxL: jax.Array, age_BxL: jax.Array | None = None,
            days_BxL: jax.Array | None = None) -> jax.Array: ...

  def logits(self, h_BxLxD: jax.Array) -> jax.Array: ...

  def output_head(self) -> tuple[jax.Array, jax.Array]:
    """(w [D,V], float32 bias [V]) with logits(h) == h @ w + bias: the pretraining loss takes them
    to fuse the projection with the softmax (`lmm_jax.tasks.losses.next_token_nll`)."""
    ...

  def init_cache(self, batch: int, length: int) -> Any: ...

  def fork_cache(self, cache: Any, lengths_B: jax.Array, num_samples: int,
                 new_tokens: int) -> Any:
    """From a prefill's cache of B rows (lengths_B real tokens each): the cache of B x num_samples
    continuations, r * num_samples + i continuing row r, with room for new_tokens more tokens."""
    ...


def check_inputs(tokens_BxL: jax.Array | None, segment_ids_BxL: jax.Array | None,
                 age_BxL: jax.Array | None, days_BxL: jax.Array | None,
                 embeddings_BxLxD: jax.Array | None, cache: Any) -> None:
  """The argument rules of `Backbone.__call__`, with one-line errors."""
  if embeddings_BxLxD is None and tokens_BxL is None:
    raise ValueError("pass tokens or embeddings_BxLxD")
  if embeddings_BxLxD is not None and not (tokens_BxL is None and age_BxL is None
                                           and days_BxL is None):
    raise ValueError("embeddings_BxLxD replaces tokens, age and days: pass None for those")
  if cache is None and segment_ids_BxL is None:
    raise ValueError("segment_ids are required without a cache")
  if cache is not None and segment_ids_BxL is not None:
    raise ValueError("segment_ids must be None with a cache: a cached row holds one sequence "
                     "(slot p = position p)")


__all__ = ["Backbone", "ModelOutput", "check_inputs"]
