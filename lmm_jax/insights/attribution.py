"""Which history events drive a prediction: integrated gradients and occlusion.

Both work on a `Predictor` (see `lmm_jax.insights.loading`): pure functions of the parameters
that embed a batch and map input embeddings to the model's outputs, plus a `select` that picks
one scalar per row (e.g. the predicted cost, or the logit of one chronic condition).

Integrated gradients (Sundararajan et al., 2017) on the input embeddings x (token embedding plus
time embedding). The baseline x' replaces the token of every attributed position by [PAD] and
keeps its time embedding, so a position's attribution measures what its *code* contributes, and
positions outside the attributed set (the demographic prefix, padding) have x = x' and get exactly
0. With the midpoint rule over `steps` points,
  attr_i = sum_d (x - x')_id * mean_k dF/dx_id (x' + a_k (x - x')),   a_k = (k + 1/2) / steps,
and sum_i attr_i = F(x) - F(x') up to the O(1/steps^2) quadrature error (completeness).

Occlusion deletes one event (all tokens of one claim) from the history, re-packs it and measures
F(x) - F(x without the event): the same question answered by re-running the model.

Dimension letters: B batch, L length, D model width, S integration steps, G events.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lmm_jax import xla_options
from lmm_jax.conventions import TokenKind

Batch = Mapping[str, Any]
SEQUENCE_KEYS = ("tokens", "segment_ids", "positions", "age", "days")


@dataclasses.dataclass(frozen=True)
class Output:
  """Selects one scalar per row from the model outputs: outputs[name] or outputs[name][:, index].

  Hashable (unlike a lambda), so jitted attribution compiles once per selected output.
  """
  name: str
  index: int | None = None

  def __call__(self, outputs: Mapping[str, Any]) -> Any:
    v = outputs[self.name]
    return v if self.index is None else v[:, self.index]


@dataclasses.dataclass
class IGResult:
  attributions_BxL: np.ndarray  # float32 per-token attribution
  score_B: np.ndarray           # F(x)
  baseline_score_B: np.ndarray  # F(x')

  @property
  def completeness_gap_B(self) -> np.ndarray:
    """sum_i attr_i - (F(x) - F(x')): the quadrature error."""
    return self.attributions_BxL.sum(-1) - (self.score_B - self.baseline_score_B)


def pad_baseline_tokens(tokens_BxL: np.ndarray, attribute_BxL: np.ndarray,
                        pad_id: int = 0) -> np.ndarray:
  """The baseline's tokens: [PAD] at attributed positions, the original tokens elsewhere."""
  return np.where(attribute_BxL, pad_id, tokens_BxL).astype(tokens_BxL.dtype)


def history_mask(length_B: np.ndarray, prefix_len_B: np.ndarray, seq_len: int) -> np.ndarray:
  """bool[B,L]: the event positions of each row (after the demographic prefix, before padding)."""
  pos_1L = np.arange(seq_len)[None, :]
  return (pos_1L >= np.asarray(prefix_len_B)[:, None]) & (pos_1L < np.asarray(length_B)[:, None])


@functools.partial(xla_options.jit, static_argnames=("score_fn", "steps", "chunk"))
def _ig_core(params: Any, x_BxLxD: jax.Array, base_BxLxD: jax.Array, batch: Batch,
             weights: jax.Array | None, *, score_fn: Callable[..., jax.Array], steps: int,
             chunk: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  def scores(x):
    s = score_fn(params, x, batch).astype(jnp.float32)
    return s if weights is None else (s * weights).sum(-1)

  def total(x):
    return scores(x).sum()

  grad_fn = jax.grad(total)
  delta_BxLxD = (x_BxLxD - base_BxLxD).astype(jnp.float32)
  alphas_S = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps

  def grad_at(a):
    return grad_fn((base_BxLxD + a * delta_BxLxD).astype(x_BxLxD.dtype)).astype(jnp.float32)

  # lax.map over alpha chunks: `chunk` interpolation points share one vectorized backward pass.
  grads_SxBxLxD = jax.lax.map(grad_at, alphas_S, batch_size=chunk)
  attr_BxL = (delta_BxLxD * grads_SxBxLxD.mean(0)).sum(-1)
  return attr_BxL, scores(x_BxLxD), scores(base_BxLxD)


def integrated_gradients(predictor: Any, batch: Batch, attribute_BxL: np.ndarray,
                         select: Callable[[Mapping[str, jax.Array]], jax.Array], *,
                         weights_BxO: np.ndarray | None = None, steps: int = 32,
                         chunk: int = 8) -> IGResult:
  """Integrated gradients of `select(outputs)` w.r.t. the input embeddings of attributed tokens.

  Args:
    predictor: has `params`, `embed_fn(params, batch) -> x_BxLxD`,
      `outputs_fn(params, x_BxLxD, batch) -> {name: array}` and `pad_id`.
    batch: numpy sequence features (tokens, segment_ids, positions, age, days, length, ...).
    attribute_BxL: bool, the positions whose tokens are attributed (others keep their token in the
      baseline and get 0).
    select: outputs -> float[B], the explained scalar per row; or float[B, O] with weights_BxO.
    weights_BxO: explain sum_o weights[b, o] * select(outputs)[b, o] (e.g. a one-hot picking a
      different condition per row) without recompiling per choice.
    steps: interpolation points (the quadrature error falls as 1/steps^2).
    chunk: interpolation points per vectorized backward pass (memory vs speed).
  """
  if steps % chunk:
    chunk = int(np.gcd(steps, chunk))
  base_batch = dict(batch)
  base_batch["tokens"] = pad_baseline_tokens(np.asarray(batch["tokens"]),
                                             np.asarray(attribute_BxL), predictor.pad_id)
  dev = predictor.device_batch(batch)
  x_BxLxD = predictor.embed_fn(predictor.params, dev)
  base_BxLxD = predictor.embed_fn(predictor.params, predictor.device_batch(base_batch))
  score_fn = _SelectedScore(predictor.outputs_fn, select)
  w = None if weights_BxO is None else jnp.asarray(weights_BxO, jnp.float32)
  attr, fx, fb = _ig_core(predictor.params, x_BxLxD, base_BxLxD, dev, w, score_fn=score_fn,
                          steps=steps, chunk=chunk)
  return IGResult(np.asarray(attr), np.asarray(fx), np.asarray(fb))


@dataclasses.dataclass(frozen=True)
class _SelectedScore:
  """outputs_fn followed by select; hashable so that jit caches one trace per pair."""
  outputs_fn: Callable[..., Mapping[str, jax.Array]]
  select: Callable[[Mapping[str, jax.Array]], jax.Array]

  def __call__(self, params: Any, x_BxLxD: jax.Array, batch: Batch) -> jax.Array:
    return self.select(self.outputs_fn(params, x_BxLxD, batch))


# ------------------------------------------------------------------------------------------------
# Events: the claims of a history, as vocab.decode prints them.


def event_groups(tokens_L: Sequence[int], kinds: np.ndarray, systems: Sequence[str],
                 prefix_len: int, length: int, *, bos_id: int, eos_id: int,
                 pad_id: int = 0) -> np.ndarray:
  """int32[L] event index of each token: 0, 1, ... per claim; -1 for prefix and padding.

  Splits where `Vocabulary.decode` starts a new line: at a time-gap token, at BOS/EOS, at a
  claim-type token once the current event has content, and at death.
  """
  tokens_L = np.asarray(tokens_L)
  out = np.full(len(tokens_L), -1, np.int32)
  g, has_event, started = -1, False, False
  for i in range(prefix_len, min(length, len(tokens_L))):
    t = int(tokens_L[i])
    if t == pad_id:
      continue
    kind = int(kinds[t]) if 0 <= t < len(kinds) else int(TokenKind.OTHER)
    new = (kind == TokenKind.TIME or t in (bos_id, eos_id) or kind == TokenKind.DEATH or
           (kind == TokenKind.CLAIM and systems[t] == "CLAIM" and has_event))
    if new or not started:
      g += 1
      has_event, started = False, True
    out[i] = g
    if kind not in (TokenKind.TIME, TokenKind.SPECIAL, TokenKind.DEMOGRAPHIC):
      has_event = True
  return out


def aggregate_events(attr_L: np.ndarray, groups_L: np.ndarray) -> np.ndarray:
  """float[G]: the summed attribution of each event's tokens."""
  g = int(groups_L.max()) + 1 if groups_L.size and groups_L.max() >= 0 else 0
  keep = groups_L >= 0
  return np.bincount(groups_L[keep], weights=attr_L[keep], minlength=g).astype(np.float32)


@dataclasses.dataclass
class EventContribution:
  event: int            # index of the event (claim) in the history
  contribution: float   # attribution or occlusion effect, in units of the explained score
  days_before_index: float
  text: str             # readable: 'CLAIM OUTPATIENT | ICD10CM E11.9 Type 2 diabetes ...'


def describe_events(tokens_L: np.ndarray, groups_L: np.ndarray, contrib_G: np.ndarray,
                    days_before_L: np.ndarray, describe: Callable[[int], str],
                    kinds: np.ndarray, *, top: int = 8) -> list[EventContribution]:
  """The `top` events by |contribution|, with their readable text (time-gap tokens omitted)."""
  order = np.argsort(-np.abs(contrib_G), kind="stable")[:top]
  out = []
  for g in order:
    idx = np.flatnonzero(groups_L == g)
    parts = [describe(int(tokens_L[i])) for i in idx if int(kinds[tokens_L[i]]) != TokenKind.TIME]
    out.append(EventContribution(int(g), float(contrib_G[g]),
                                 float(days_before_L[idx[0]]) if len(idx) else float("nan"),
                                 " | ".join(parts)))
  return out


# ------------------------------------------------------------------------------------------------
# Occlusion.


def delete_tokens(row: Mapping[str, np.ndarray], drop_L: np.ndarray, seq_len: int
                  ) -> dict[str, np.ndarray]:
  """One unpadded-then-repadded sequence row without the dropped positions.

  `days` stay relative to the row's first token (the prefix is never dropped); the row's other
  (per-member) fields are copied unchanged.
  """
  n = int(row["length"])
  keep = np.flatnonzero(~drop_L[:n])
  m = len(keep)
  out = {k: v for k, v in row.items() if k not in SEQUENCE_KEYS + ("length",)}
  for k in ("tokens", "age", "days"):
    buf = np.zeros(seq_len, np.asarray(row[k]).dtype)
    buf[:m] = np.asarray(row[k])[keep]
    out[k] = buf
  out["segment_ids"] = (np.arange(seq_len) < m).astype(np.int32)
  out["positions"] = np.where(out["segment_ids"] > 0, np.arange(seq_len), 0).astype(np.int32)
  out["length"] = np.int32(m)
  return out


def stack_rows(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}


def occlusion(predictor: Any, row: Mapping[str, np.ndarray], groups_L: np.ndarray,
              select: Callable[[Mapping[str, jax.Array]], jax.Array], *,
              batch_size: int = 16) -> tuple[np.ndarray, float]:
  """(float[G] F(x) - F(x without event g), F(x)) for one row; G = number of events.

  Variants run in batches of a fixed size (padded with copies of the full row) so that one
  compiled forward serves every member.
  """
  seq_len = len(row["tokens"])
  g_count = int(groups_L.max()) + 1 if groups_L.max() >= 0 else 0
  variants = [delete_tokens(row, np.zeros(seq_len, bool), seq_len)]
  variants += [delete_tokens(row, groups_L == g, seq_len) for g in range(g_count)]
  scores = predict_scores(predictor, variants, select, batch_size=batch_size)
  return (scores[0] - scores[1:]).astype(np.float32), float(scores[0])


def predict_scores(predictor: Any, rows: Sequence[Mapping[str, np.ndarray]],
                   select: Callable[[Mapping[str, jax.Array]], jax.Array], *,
                   batch_size: int = 16) -> np.ndarray:
  """select(outputs) for every row, run in fixed-size batches."""
  out = []
  for s in range(0, len(rows), batch_size):
    chunk = list(rows[s:s + batch_size])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)
    b = stack_rows(chunk)
    out.append(np.asarray(predictor.score(b, select))[:n])
  return np.concatenate(out) if out else np.zeros(0, np.float32)
