"""A tiny random-init fine-tuning model wrapped as a Predictor, and hand-made rows."""

from __future__ import annotations

from flax import nnx
import jax
import numpy as np

from lmm_jax.insights import loading
from lmm_jax.model import heads
from lmm_jax.model import transformer

VOCAB = 40
SEQ_LEN = 24
NUM_OUT = 3


def tiny_predictor(seed: int = 0, pooling: str = "last") -> loading.Predictor:
  cfg = transformer.TransformerConfig(vocab_size=VOCAB, padded_vocab_size=VOCAB, num_layers=2,
                                      d_model=32, num_heads=2, num_kv_heads=2, head_dim=16,
                                      mlp_dim=64, num_time_features=8)
  model = heads.FinetuneModel(cfg, heads.HeadConfig(num_outputs=NUM_OUT, hidden_dim=16,
                                                    pooling=pooling), rngs=nnx.Rngs(seed))
  # Random-init outputs are nearly constant; larger head weights make attributions visible.
  model.head.out[...] = model.head.out[...] * 50.0
  graphdef, state = nnx.split(model)
  params = nnx.to_pure_dict(state)

  def embed_fn(p, batch):
    return nnx.merge(graphdef, p).backbone.embed(batch["tokens"], batch["age"], batch["days"])

  def outputs_fn(p, x, batch):
    m = nnx.merge(graphdef, p)
    out = m.from_embeddings(x, batch["segment_ids"], batch["positions"], batch["length"])
    return {"logit": out, "prob": jax.nn.sigmoid(out)}

  return loading.Predictor(params=params, embed_fn=embed_fn, outputs_fn=outputs_fn,
                           embedding_matrix_VxD=np.asarray(params["backbone"]["embedding"]))


def make_row(rng: np.random.Generator, length: int, prefix_len: int = 3,
             seq_len: int = SEQ_LEN) -> dict[str, np.ndarray]:
  tokens = np.zeros(seq_len, np.int32)
  tokens[:length] = np.concatenate([[1], rng.integers(3, VOCAB, size=length - 1)])
  days = np.zeros(seq_len, np.float32)
  days[prefix_len:length] = np.cumsum(rng.integers(0, 40, size=length - prefix_len))
  age = np.zeros(seq_len, np.float32)
  age[:length] = 50.0 + days[:length] / 365.25
  seg = (np.arange(seq_len) < length).astype(np.int32)
  return {"tokens": tokens, "age": age, "days": days, "segment_ids": seg,
          "positions": np.where(seg > 0, np.arange(seq_len), 0).astype(np.int32),
          "length": np.int32(length), "prefix_len": np.int32(prefix_len),
          "days_before_index": (days[length - 1] + 10 - days).astype(np.float32),
          "cond_prior": np.zeros(22, np.int32), "cond_next": np.zeros(22, np.int32)}
