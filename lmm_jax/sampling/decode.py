"""Autoregressive sampling of patient futures with a KV cache (jit-compiled, static shapes).

    sc = SamplingConfig(num_samples=20, max_new_tokens=256)
    sampler = Sampler(model, vocab.time_gap_days, vocab.eos_id, sc, context_len=512)
    futures = sampler.generate([History(tokens, age, days, horizon_days=365.0)], seed=0)

Prefill and decode steps call the model itself with a cache (`model(..., cache=cache)`, see
`lmm_jax.model.backbone`): the same forward pass as training, whose attention reads and writes the
keys and values. Any registered backbone (`lmm_jax.model.registry`) samples the same way.

One jit call handles a batch of patients: the histories are right-padded to a static prefill length
P and prefilled once; `model.fork_cache` then makes the cache of N continuations of each patient
(row = patient * N + sample), so the N futures of a patient share one prefill (the transformer keeps
the prefill's keys and values once per patient, `SharedPrefixCache`, instead of N copies that every
decode step would read). A `lax.while_loop` samples up to `max_new_tokens` tokens
per row and stops early once every row is done. A row is done when
  * a sampled time-gap token brings the running clock (sum of vocab.time_gap_days of the generated
    gap tokens, days) to or past the row's horizon: that token and everything after are dropped,
  * it samples the end token ([EOS]; kept as the row's last token), or
  * the token budget is spent.
The inputs of a generated token advance with the clock as in the dataset builder: a gap token
carries the new day, so days += gap and age += gap / 365.25 (age stays -1 when unknown).

Banned tokens (`banned_token_ids(vocab, min_count)`: [PAD], every [UNK] and every code token seen
fewer than min_count times on train) get logit -inf before filtering, so no future contains them.

Randomness: row r of patient p uses fold_in(fold_in(PRNGKey(seed), patient_index[p]), sample) and
folds in the step, so a patient's futures do not depend on the batch it was put in, its padding,
or the mesh.

Dimension letters: B rows (patients x samples), P prefill length, T new tokens, V padded vocabulary, D model width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np

from lmm_jax import sharding
from lmm_jax import xla_options
from lmm_jax.conventions import TokenKind
from lmm_jax.model.backbone import Backbone
from lmm_jax.model.transformer import Cache, init_cache  # re-exported (lmm_jax.sampling)

DAYS_PER_YEAR = 365.25
NO_HORIZON = 1e9  # days: a horizon never reached
STOP_BUDGET, STOP_HORIZON, STOP_EOS = 0, 1, 2
STOP_REASONS = ("budget", "horizon", "eos")
# Kinds of the tokens that stand for a MEDS code (the synthetic cohort writes them as rows).
CODE_KINDS = (TokenKind.DIAGNOSIS, TokenKind.PROCEDURE, TokenKind.DRUG, TokenKind.CLAIM,
              TokenKind.OTHER)
UNK_SUFFIX = "//[UNK]"


def rare_code_mask(vocab: Any, min_count: int) -> np.ndarray:
  """bool[V]: [UNK] tokens and code tokens (CODE_KINDS) with a train count below min_count."""
  unk_V = np.array([t.endswith(UNK_SUFFIX) for t in vocab.tokens], bool)
  code_V = np.isin(vocab.kinds, np.array(CODE_KINDS, np.int8))
  return unk_V | (code_V & (np.asarray(vocab.counts) < int(min_count)))


def banned_token_ids(vocab: Any, min_count: int) -> np.ndarray:
  """Token ids generation never emits: [PAD] and `rare_code_mask(vocab, min_count)`."""
  banned_V = rare_code_mask(vocab, min_count)
  banned_V[vocab.pad_id] = True
  return np.flatnonzero(banned_V).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Static sampling options (hashable: they are compile-time constants)."""
  num_samples: int = 20          # N futures per patient (one shared prefill)
  max_new_tokens: int = 256      # token budget per future
  temperature: float = 1.0       # 0: greedy (argmax)
  top_k: int = 0                 # keep the k most likely tokens; 0: off
  top_p: float = 1.0             # nucleus: smallest set with probability >= top_p; 1.0: off
  stop_at_eos: bool = True

  def __post_init__(self):
    if self.num_samples < 1 or self.max_new_tokens < 1:
      raise ValueError(f"num_samples={self.num_samples} and max_new_tokens={self.max_new_tokens} "
                       "must be >= 1")
    if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
      raise ValueError(f"bad sampling knobs: temperature={self.temperature} (>= 0), "
                       f"top_k={self.top_k} (>= 0), top_p={self.top_p} (in (0, 1])")


# ------------------------------------------------------------------------------------------------
# The cached forward pass: the model's own, with a cache (slot p = position p).


def prefill(model: Backbone, tokens_BxP: jax.Array, age_BxP: jax.Array, days_BxP: jax.Array,
            lengths_B: jax.Array, cache_len: int) -> tuple[jax.Array, Any]:
  """(logits [B,V] after each row's last history token, cache of length cache_len).

  Rows are right-padded histories; the padding's cache slots are overwritten by the decode steps
  before they become visible, so the prefill is exact.
  """
  b, p = tokens_BxP.shape
  positions_BxP = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32)[None, :], (b, p))
  out = model(tokens_BxP, None, positions_BxP, age_BxP, days_BxP,
              cache=model.init_cache(b, cache_len), return_logits=False)
  last_Bx1xD = jnp.take_along_axis(out.hidden, (lengths_B - 1)[:, None, None], axis=1)
  return model.logits(last_Bx1xD)[:, 0], out.cache


def decode_step(model: Backbone, token_B: jax.Array, age_B: jax.Array, days_B: jax.Array,
                pos_B: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
  """One new token per row at position pos_B: (logits [B,V], updated cache)."""
  out = model(token_B[:, None], None, pos_B.astype(jnp.int32)[:, None], age_B[:, None],
              days_B[:, None], cache=cache)
  return out.logits[:, 0], out.cache


# ------------------------------------------------------------------------------------------------
# Sampling.


def filter_logits(logits_V: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
  """Temperature, then top-k, then top-p (nucleus) filtering of one row of logits."""
  logits_V = logits_V.astype(jnp.float32) / max(temperature, 1e-6)
  neg = jnp.float32(-jnp.inf)
  if 0 < top_k < logits_V.shape[-1]:
    kth = jax.lax.top_k(logits_V, top_k)[0][-1]
    logits_V = jnp.where(logits_V < kth, neg, logits_V)
  if top_p < 1.0:
    sorted_V = jnp.sort(logits_V)[::-1]
    probs_V = jax.nn.softmax(sorted_V)
    # Keep a token while the mass before it is below top_p (the most likely is always kept).
    keep_V = (jnp.cumsum(probs_V) - probs_V) < top_p
    threshold = jnp.min(jnp.where(keep_V, sorted_V, jnp.inf))
    logits_V = jnp.where(logits_V < threshold, neg, logits_V)
  return logits_V


def sample_tokens(keys_B: jax.Array, logits_BxV: jax.Array, sc: SamplingConfig) -> jax.Array:
  if sc.temperature == 0.0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)

  def one(key, logits_V):
    return jax.random.categorical(key, filter_logits(logits_V, sc.temperature, sc.top_k,
                                                     sc.top_p)).astype(jnp.int32)

  return jax.vmap(one)(keys_B, logits_BxV)


def row_keys(seed: int | jax.Array, patient_index_B: jax.Array, sample_index_B: jax.Array
             ) -> jax.Array:
  base = jax.random.PRNGKey(seed)
  return jax.vmap(lambda p, s: jax.random.fold_in(jax.random.fold_in(base, p), s))(
      patient_index_B, sample_index_B)


def _sample_loop(step_fn, state0: dict[str, Any], keys_B: jax.Array, horizon_B: jax.Array,
                 gap_days_V: jax.Array, eos_id: int, sc: SamplingConfig,
                 logit_bias_V: jax.Array | None = None) -> dict[str, jax.Array]:
  """Shared loop: sample, stop rules, clock and time inputs; `step_fn` runs the model.

  logit_bias_V: added to the logits before sampling (-inf bans a token); None adds nothing.
  """
  b = keys_B.shape[0]
  t = sc.max_new_tokens
  carry = dict(state0, step=jnp.zeros((), jnp.int32), done=jnp.zeros((b,), bool),
               clock=jnp.zeros((b,), jnp.float32), num=jnp.zeros((b,), jnp.int32),
               reason=jnp.full((b,), STOP_BUDGET, jnp.int8),
               out_tokens=jnp.zeros((b, t), jnp.int32), out_clock=jnp.zeros((b, t), jnp.float32))

  def cond(c):
    return (c["step"] < t) & ~jnp.all(c["done"])

  def body(c):
    step = c["step"]
    keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys_B)
    logits_BxV = c["logits"]
    if logit_bias_V is not None:
      logits_BxV = logits_BxV.astype(jnp.float32) + logit_bias_V[None, :]
    tok_B = sample_tokens(keys, logits_BxV, sc)
    gap_B = gap_days_V[tok_B]
    clock_B = c["clock"] + gap_B
    crossed_B = (gap_B > 0) & (clock_B >= horizon_B)
    eos_B = (tok_B == eos_id) if sc.stop_at_eos else jnp.zeros_like(crossed_B)
    keep_B = ~c["done"] & ~crossed_B
    out_tokens = c["out_tokens"].at[:, step].set(jnp.where(keep_B, tok_B, 0))
    out_clock = c["out_clock"].at[:, step].set(jnp.where(keep_B, clock_B, 0.0))
    reason = jnp.where(c["done"], c["reason"],
                       jnp.where(crossed_B, STOP_HORIZON,
                                 jnp.where(eos_B, STOP_EOS, STOP_BUDGET)).astype(jnp.int8))
    days_B = c["days"] + gap_B
    age_B = jnp.where(c["age"] >= 0, c["age"] + gap_B / DAYS_PER_YEAR, c["age"])
    new = dict(c, step=step + 1, done=c["done"] | crossed_B | eos_B, clock=clock_B,
               num=c["num"] + keep_B.astype(jnp.int32), reason=reason, out_tokens=out_tokens,
               out_clock=out_clock, days=days_B, age=age_B)
    new.update(step_fn(c, tok_B, age_B, days_B))
    return new

  final = jax.lax.while_loop(cond, body, carry)
  return {"tokens": final["out_tokens"], "clock": final["out_clock"], "num_tokens": final["num"],
          "stop_reason": final["reason"]}


def _last(x_BxP: jax.Array, lengths_B: jax.Array) -> jax.Array:
  return jnp.take_along_axis(x_BxP, (lengths_B - 1)[:, None], axis=1)[:, 0]


def generate_cached(model: Backbone, batch: Mapping[str, jax.Array],
                    gap_days_V: jax.Array, eos_id: int, seed: int | jax.Array,
                    sc: SamplingConfig, logit_bias_V: jax.Array | None = None
                    ) -> dict[str, jax.Array]:
  """Samples N futures per patient with one shared prefill (traceable; see `Sampler`).

  batch: tokens/age/days [Bp,P] (right-padded histories), lengths [Bp], horizon [Bp] (days after
  the last history token), patient_index [Bp]. Returns [Bp*N, T] tokens, clock (days after the last
  history token at each generated token), num_tokens [Bp*N], stop_reason [Bp*N].
  """
  n, t = sc.num_samples, sc.max_new_tokens
  p = batch["tokens"].shape[1]
  logits_BpxV, cache = prefill(model, batch["tokens"], batch["age"], batch["days"],
                               batch["lengths"], p)
  # The N futures of a patient continue one prefill (the transformer keeps it once, not N times).
  cache = model.fork_cache(cache, batch["lengths"], n, t)
  rep = lambda x: jnp.repeat(x, n, axis=0)
  pos_B = rep(batch["lengths"]).astype(jnp.int32)
  sample_B = jnp.tile(jnp.arange(n, dtype=jnp.int32), batch["tokens"].shape[0])
  keys_B = row_keys(seed, rep(batch["patient_index"]), sample_B)
  state0 = {"logits": rep(logits_BpxV), "cache": cache, "pos": pos_B,
            "age": rep(_last(batch["age"], batch["lengths"])),
            "days": rep(_last(batch["days"], batch["lengths"]))}

  def step_fn(c, tok_B, age_B, days_B):
    logits_BxV, new_cache = decode_step(model, tok_B, age_B, days_B, c["pos"], c["cache"])
    return {"logits": logits_BxV, "cache": new_cache, "pos": c["pos"] + 1}

  return _sample_loop(step_fn, state0, keys_B, rep(batch["horizon"]), gap_days_V, eos_id, sc,
                      logit_bias_V)


def generate_uncached(model: Backbone, batch: Mapping[str, jax.Array],
                      gap_days_V: jax.Array, eos_id: int, seed: int | jax.Array,
                      sc: SamplingConfig, logit_bias_V: jax.Array | None = None
                      ) -> dict[str, jax.Array]:
  """The same sampler without a cache: every token re-runs the full forward pass over [B, P+T].

  The reference that peers implement; used by the benchmark (speed-up) and the tests (same
  tokens for the same seed).
  """
  n, t = sc.num_samples, sc.max_new_tokens
  b, p = batch["tokens"].shape
  s = p + t
  rep = lambda x: jnp.repeat(x, n, axis=0)
  pad = lambda x: jnp.pad(rep(x), ((0, 0), (0, t)))
  tokens, age, days = pad(batch["tokens"]), pad(batch["age"]), pad(batch["days"])
  pos_B = rep(batch["lengths"]).astype(jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[None], tokens.shape)

  def logits_at(tokens_BxS, age_BxS, days_BxS, pos_B):
    seg_BxS = (positions < pos_B[:, None]).astype(jnp.int32)
    logits_BxSxV = model(tokens_BxS, seg_BxS, positions, age_BxS, days_BxS).logits
    return jnp.take_along_axis(logits_BxSxV, (pos_B - 1)[:, None, None], axis=1)[:, 0]

  sample_B = jnp.tile(jnp.arange(n, dtype=jnp.int32), b)
  keys_B = row_keys(seed, rep(batch["patient_index"]), sample_B)
  state0 = {"logits": logits_at(tokens, age, days, pos_B), "buf_tokens": tokens, "buf_age": age,
            "buf_days": days, "pos": pos_B, "age": _last(age, pos_B), "days": _last(days, pos_B)}

  def step_fn(c, tok_B, age_B, days_B):
    put = lambda buf, v: buf.at[jnp.arange(buf.shape[0]), c["pos"]].set(v.astype(buf.dtype))
    bt, ba, bd = put(c["buf_tokens"], tok_B), put(c["buf_age"], age_B), put(c["buf_days"], days_B)
    return {"logits": logits_at(bt, ba, bd, c["pos"] + 1), "buf_tokens": bt, "buf_age": ba,
            "buf_days": bd, "pos": c["pos"] + 1}

  return _sample_loop(step_fn, state0, keys_B, rep(batch["horizon"]), gap_days_V, eos_id, sc,
                      logit_bias_V)


# ------------------------------------------------------------------------------------------------
# Host-side driver.


@dataclasses.dataclass
class History:
  """One patient's conditioning history (already truncated to the context) and horizon."""
  tokens: np.ndarray            # int32[L]
  age: np.ndarray               # float32[L], years (-1 unknown)
  days: np.ndarray              # float32[L], days since the first token
  horizon_days: float = NO_HORIZON  # stop once the generated gaps sum to this many days


@dataclasses.dataclass
class Futures:
  """Sampled futures, row = patient * num_samples + sample (numpy, host)."""
  tokens: np.ndarray            # int32[R, T], 0 after the end of a future
  clock: np.ndarray             # float32[R, T], days after the last history token
  num_tokens: np.ndarray        # int32[R]
  stop_reason: np.ndarray       # int8[R], index into STOP_REASONS
  num_samples: int

  def rows_of(self, patient: int) -> slice:
    return slice(patient * self.num_samples, (patient + 1) * self.num_samples)


def _bucket(n: int, maximum: int, minimum: int = 32) -> int:
  return min(maximum, max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1))))))


class Sampler:
  """Jitted, mesh-aware sampling of N futures per patient for a model and vocabulary tables.

  Args:
    model: a registered backbone, e.g. `lmm_jax.model.Transformer` (parameters may be sharded;
      they are not copied).
    gap_days: float[V] days per time-gap token (vocab.time_gap_days), 0 for other tokens.
    eos_id: the end token.
    sc: sampling options.
    context_len: the longest prefill; histories are bucketed to powers of two up to it.
    mesh, rules: shard the rows over the 'batch' mesh axes (data parallel); None: one device.
    use_cache: False runs `generate_uncached` (the reference; tests and the benchmark).
    banned_ids: token ids never sampled (`banned_token_ids(vocab, min_count)`); () bans none.
  """

  def __init__(self, model: Backbone, gap_days: np.ndarray, eos_id: int,
               sc: SamplingConfig, *, context_len: int, mesh: jax.sharding.Mesh | None = None,
               rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES, use_cache: bool = True,
               banned_ids: Sequence[int] = ()):
    self.cfg = model.cfg
    self.sc = sc
    self.context_len = int(context_len)
    self.mesh, self.rules = mesh, tuple(tuple(r) for r in rules)
    self.eos_id = int(eos_id)
    gap = np.zeros(self.cfg.padded_vocab_size, np.float32)
    gap[:len(gap_days)] = np.asarray(gap_days, np.float32)
    self.gap_days = jnp.asarray(gap)
    banned = np.asarray(banned_ids, np.int64).reshape(-1)
    if banned.size and (banned.min() < 0 or banned.max() >= self.cfg.padded_vocab_size):
      raise ValueError(f"banned_ids must lie in [0, {self.cfg.padded_vocab_size}), got "
                       f"{banned.min()}..{banned.max()}")
    self.banned_ids = banned
    self.logit_bias = None
    if banned.size:
      bias = np.zeros(self.cfg.padded_vocab_size, np.float32)
      bias[banned] = -np.inf
      self.logit_bias = jnp.asarray(bias)
    self.graphdef, self.params = nnx.split(model)
    self.batch_shards = 1 if mesh is None else sharding.axis_size(mesh, "batch", self.rules)
    self._fn = generate_cached if use_cache else generate_uncached
    self._jit = xla_options.jit(self._run, platform=xla_options.mesh_platform(mesh),
                                static_argnames=("sc",))

  def _run(self, params, batch, gap_days, seed, sc, logit_bias=None):
    model = nnx.merge(self.graphdef, params)
    return self._fn(model, batch, gap_days, self.eos_id, seed, sc, logit_bias)

  def pad_patients(self, num: int) -> int:
    """Patients per call padded to a multiple of the batch shards."""
    return int(math.ceil(num / self.batch_shards) * self.batch_shards)

  def make_batch(self, histories: Sequence[History], patient_index: Sequence[int],
                 prefill_len: int | None = None) -> dict[str, np.ndarray]:
    if not histories:
      raise ValueError("no histories to sample from")
    longest = max(len(h.tokens) for h in histories)
    if longest > self.context_len:
      raise ValueError(f"a history has {longest} tokens > context_len={self.context_len}; "
                       "truncate it first (lmm_jax.data.pipeline.keep_indices)")
    p = prefill_len or _bucket(longest, self.context_len)
    bp = self.pad_patients(len(histories))
    out = {"tokens": np.zeros((bp, p), np.int32), "age": np.zeros((bp, p), np.float32),
           "days": np.zeros((bp, p), np.float32), "lengths": np.ones((bp,), np.int32),
           "horizon": np.full((bp,), NO_HORIZON, np.float32),
           "patient_index": np.zeros((bp,), np.int32)}
    for i in range(bp):
      h = histories[min(i, len(histories) - 1)]  # padding rows repeat the last patient
      n = len(h.tokens)
      if n == 0:
        raise ValueError(f"history {i} is empty (it needs at least the [BOS] token)")
      out["tokens"][i, :n] = h.tokens
      out["age"][i, :n] = h.age
      out["days"][i, :n] = h.days
      out["lengths"][i] = n
      out["horizon"][i] = h.horizon_days
      out["patient_index"][i] = patient_index[min(i, len(histories) - 1)]
    return out

  def generate(self, histories: Sequence[History], patient_index: Sequence[int] | None = None,
               seed: int = 0, prefill_len: int | None = None) -> Futures:
    """N futures for each history; patient_index (default 0..) seeds each patient's futures."""
    if patient_index is None:
      patient_index = range(len(histories))
    batch = self.make_batch(histories, list(patient_index), prefill_len)
    if self.mesh is not None:
      batch = sharding.put_batch(batch, self.mesh, self.rules)
      with sharding.activation_rules(self.mesh, self.rules):
        out = self._jit(self.params, batch, self.gap_days, jnp.uint32(seed), sc=self.sc,
                        logit_bias=self.logit_bias)
    else:
      out = self._jit(self.params, batch, self.gap_days, jnp.uint32(seed), sc=self.sc,
                      logit_bias=self.logit_bias)
    out = jax.device_get(out)
    r = len(histories) * self.sc.num_samples
    return Futures(tokens=np.asarray(out["tokens"])[:r], clock=np.asarray(out["clock"])[:r],
                   num_tokens=np.asarray(out["num_tokens"])[:r],
                   stop_reason=np.asarray(out["stop_reason"])[:r], num_samples=self.sc.num_samples)


def replicate_params(model: nnx.Module, mesh: jax.sharding.Mesh) -> None:
  """Places every parameter replicated on the mesh (small models; data-parallel sampling)."""
  state = nnx.state(model)
  nnx.update(model, jax.device_put(state, NamedSharding(mesh, P())))


__all__ = ["CODE_KINDS", "Cache", "Futures", "History", "NO_HORIZON", "STOP_REASONS",
           "Sampler", "SamplingConfig", "banned_token_ids", "decode_step", "filter_logits",
           "generate_cached", "generate_uncached", "init_cache", "prefill", "rare_code_mask",
           "row_keys", "sample_tokens"]
