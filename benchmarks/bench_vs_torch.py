r"""lmm_jax against Hugging Face GPT-2 in PyTorch at equal size, side by side in one invocation.

  pip install -r requirements-bench.txt          # the optional extra (torch CPU, transformers)
  python -m benchmarks.bench_vs_torch            # every row, 6 timed steps each
  python -m benchmarks.bench_vs_torch --rows=demo,sampling --repeats=8

Rows (issue 16): a train step at three sizes and KV-cache sampling at the demo size. Both models
get the same layers, width, heads, vocabulary, batch and sequence length; the MLP widths make the
FLOPs match (lmm_jax's SwiGLU at ~8/3 d_model, three matrices, against GPT-2's 4 d_model GELU, two
matrices), the time embedding is off and dropout is 0 in both. The peer trains the way a user
would: `GPT2LMHeadModel(labels=...)`, plain causal attention over each row (its SDPA kernel; no
packing mask, which favours it), `torch.optim.AdamW` and global-norm clipping; lmm_jax runs its
real train step (`lmm_jax.train.trainer.Trainer`: packed segment mask, AdamW, clipping, donated
state). Sampling: N futures of T tokens after one H-token history, HF `generate` (do_sample, its
KV cache, `num_return_sequences=N`) against `lmm_jax.sampling.decode.Sampler` (one shared
prefill, N rows); no stop token in either, so both produce N x T tokens.

The two run interleaved (one lmm_jax step, one PyTorch step, ...) so load from other jobs on a
shared machine hits both alike; the table shows medians of wall and of process CPU seconds per
step (per generate call for sampling) with both ratios, and the load average. Threads: PyTorch
gets as many intra-op threads as XLA:CPU's pool has (counted and printed); set OMP_WAIT_POLICY
before the run to change how PyTorch's OpenMP threads wait (printed too).
PyTorch and transformers are a benchmark extra only: lmm_jax and its tests never import them.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import time
from typing import Callable

from absl import app
from absl import flags
from flax import nnx
import jax
import numpy as np

from benchmarks import bench_train
from experiments.configs import pretrain as pretrain_config
from lmm_jax.model import registry
from lmm_jax.sampling import decode
from lmm_jax.train import trainer as trainer_lib

try:  # the optional benchmark extra (requirements-bench.txt)
  import torch
  import transformers
except ImportError as e:  # pragma: no cover - depends on the environment
  raise SystemExit(f"bench_vs_torch needs the benchmark extra: pip install -r "
                   f"requirements-bench.txt ({e})") from e


@dataclasses.dataclass(frozen=True)
class Row:
  """One comparison: model dimensions and what is timed."""
  label: str
  num_layers: int
  d_model: int
  num_heads: int
  vocab: int
  seq_len: int = 0          # train rows
  batch: int = 8
  history: int = 0          # sampling rows: history tokens, futures, new tokens per future
  futures: int = 0
  new_tokens: int = 0

  @property
  def sampling(self) -> bool:
    return self.futures > 0


ROWS: dict[str, Row] = {
    "train": Row("train step, 4 layers d256 seq 512 batch 8 vocab 8192", 4, 256, 4, 8192, 512),
    "demo": Row("train step, 4 layers d128 seq 256 batch 8 vocab 768 (demo)", 4, 128, 4, 768, 256),
    "small": Row("train step, 8 layers d384 seq 512 batch 8 vocab 4096 (small)", 8, 384, 6, 4096,
                 512),
    "sampling": Row("sampling 20 futures x 256 tokens after a 512-token history (demo size)",
                    4, 128, 4, 768, history=512, futures=20, new_tokens=256),
}

_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows to run, from {list(ROWS)}.")
_STEPS = flags.DEFINE_integer("repeats", 6, "Timed steps (sampling: generate calls) per side.")
_WARMUP = flags.DEFINE_integer("warmup_steps", 1, "Untimed steps per side after compilation.")


def swiglu_width(d_model: int) -> int:
  """SwiGLU hidden width with the FLOPs of a 4 d_model GELU MLP (3 f d = 8 d^2), rounded to 32."""
  return int(round(8 * d_model / 3 / 32)) * 32


def _jax_config(row: Row):
  c = pretrain_config.get_config("demo")
  with c.unlocked():
    c.batch_size, c.seq_len = row.batch, row.seq_len or row.history
    m = c.model
    m.num_layers, m.d_model, m.num_heads, m.num_kv_heads = (row.num_layers, row.d_model,
                                                             row.num_heads, row.num_heads)
    m.head_dim = row.d_model // row.num_heads
    m.mlp_dim = swiglu_width(row.d_model)
    m.time_embedding, m.dropout_rate, m.dtype, m.attention_impl = "none", 0.0, "float32", "xla"
    c.progress = False
  return c


def _gpt2(row: Row) -> "transformers.GPT2LMHeadModel":
  cfg = transformers.GPT2Config(
      vocab_size=row.vocab, n_positions=max(1024, row.seq_len, row.history + row.new_tokens),
      n_embd=row.d_model, n_layer=row.num_layers, n_head=row.num_heads, n_inner=4 * row.d_model,
      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
      pad_token_id=0, attn_implementation="sdpa")  # PyTorch's fused attention
  torch.manual_seed(0)
  return transformers.GPT2LMHeadModel(cfg)


def _jax_train(row: Row) -> tuple[Callable[[], None], dict[str, float]]:
  config = _jax_config(row)
  task = bench_train._BenchTask(config, vocab=bench_train._Vocab(row.vocab))  # pylint: disable=protected-access
  trainer = trainer_lib.Trainer(config, task)
  rng = np.random.default_rng(0)
  batches = [trainer.device_batch(bench_train._random_batch(rng, row.batch, row.seq_len, row.vocab))  # pylint: disable=protected-access
             for _ in range(2)]
  holder = {"state": trainer.init_state(0), "i": 0}
  compiled = trainer.compile(batches[0])

  def step():
    holder["state"], out = compiled(holder["state"], batches[holder["i"] % 2])
    holder["i"] += 1
    jax.block_until_ready(out)

  # Untied output layer: the input table is a lookup; every other parameter multiplies.
  info = {"matmul_params_M": (trainer.num_params - row.vocab * row.d_model) / 1e6}
  return step, info


def _torch_train(row: Row) -> tuple[Callable[[], None], dict[str, float]]:
  model = _gpt2(row)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(2):
    b = bench_train._random_batch(rng, row.batch, row.seq_len, row.vocab)  # pylint: disable=protected-access
    tokens = torch.from_numpy(b["tokens"].astype(np.int64))
    labels = tokens.masked_fill(torch.from_numpy(b["segment_ids"] == 0), -100)
    batches.append((tokens, labels))
  holder = {"i": 0}

  def step():
    tokens, labels = batches[holder["i"] % 2]
    holder["i"] += 1
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=tokens, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  n = sum(p.numel() for p in model.parameters())
  # Tied output layer (counted once, as a matmul); the position table is a lookup.
  info = {"matmul_params_M": (n - model.transformer.wpe.weight.numel()) / 1e6}
  return step, info


def _histories(row: Row) -> list[decode.History]:
  rng = np.random.default_rng(1)
  tokens = np.concatenate([[1], rng.integers(3, row.vocab, size=row.history - 1)]).astype(np.int32)
  days = np.cumsum(rng.integers(0, 5, size=row.history)).astype(np.float32)
  return [decode.History(tokens, (50.0 + days / 365.25).astype(np.float32), days)]


def _jax_sample(row: Row) -> tuple[Callable[[], int], dict[str, float]]:
  config = _jax_config(row)
  padded = -(-row.vocab // 128) * 128
  model = registry.build(registry.make_config(config.model, row.vocab, padded), nnx.Rngs(0))
  sc = decode.SamplingConfig(num_samples=row.futures, max_new_tokens=row.new_tokens,
                             stop_at_eos=False)
  sampler = decode.Sampler(model, np.zeros(row.vocab, np.float32), -1, sc,
                           context_len=row.history)
  hist = _histories(row)
  holder = {"seed": 0}

  def run() -> int:
    holder["seed"] += 1
    return int(sampler.generate(hist, seed=holder["seed"]).num_tokens.sum())

  return run, {}


def _torch_sample(row: Row) -> tuple[Callable[[], int], dict[str, float]]:
  model = _gpt2(row)
  model.eval()
  ids = torch.from_numpy(_histories(row)[0].tokens.astype(np.int64))[None, :]
  mask = torch.ones_like(ids)

  def run() -> int:
    with torch.inference_mode():
      out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                           num_return_sequences=row.futures, max_new_tokens=row.new_tokens,
                           min_new_tokens=row.new_tokens, use_cache=True, pad_token_id=0)
    return int((out.shape[1] - ids.shape[1]) * out.shape[0])

  return run, {}


def _interleaved(a: Callable[[], object], b: Callable[[], object], steps: int, warmup: int
                 ) -> tuple[list[float], list[float], object, object, list[float], list[float]]:
  """Alternates a and b: (wall times of a, of b, last result of a, of b, CPU seconds of a, of b).

  CPU seconds are the process's; PyTorch's OpenMP threads spin while waiting, which counts there
  too, so on a loaded machine neither figure is free of the load: compare the min-max spreads.
  """
  ta, tb, ra, rb, ca, cb = [], [], None, None, [], []
  for i in range(warmup + steps):
    c0, t0 = time.process_time(), time.perf_counter()
    ra = a()
    c1, t1 = time.process_time(), time.perf_counter()
    rb = b()
    c2, t2 = time.process_time(), time.perf_counter()
    if i >= warmup:
      ta.append(t1 - t0)
      tb.append(t2 - t1)
      ca.append(c1 - c0)
      cb.append(c2 - c1)
  return ta, tb, ra, rb, ca, cb


def xla_intra_op_threads() -> int:
  """Threads of XLA:CPU's intra-op pool in this process (named tf_XLAEigen; 0 if unreadable).

  XLA sizes the pool itself (the schedulable cores) and jax has no setting for it, so PyTorch is
  given the same count (`torch.set_num_threads`) rather than the other way round.
  """
  jax.block_until_ready(jax.jit(lambda x: x + 1)(np.ones(2, np.float32)))  # the client is up
  try:
    tasks = os.listdir("/proc/self/task")
    names = []
    for t in tasks:
      with open(f"/proc/self/task/{t}/comm", encoding="utf-8") as f:
        names.append(f.read())
  except OSError:
    return 0
  return sum("XLAEigen" in n for n in names)


def run_row(row: Row, steps: int, warmup: int) -> dict[str, float]:
  """Medians: wall and process CPU seconds per step (sampling: per generate call) of each side."""
  if row.sampling:
    (ja, _), (pt, _) = _jax_sample(row), _torch_sample(row)
    ja()  # compile
    tj, tt, nj, nt, cj, ct = _interleaved(ja, pt, steps, warmup)
    out = {"jax": nj / statistics.median(tj), "torch": nt / statistics.median(tt),
           "tokens_jax": nj, "tokens_torch": nt}
    out["ratio"] = out["jax"] / out["torch"]
  else:
    (ja, ji), (pt, pi) = _jax_train(row), _torch_train(row)
    tj, tt, _, _, cj, ct = _interleaved(ja, pt, steps, warmup)
    out = {"jax": statistics.median(tj), "torch": statistics.median(tt),
           "params_jax": ji["matmul_params_M"], "params_torch": pi["matmul_params_M"]}
    out["ratio"] = out["torch"] / out["jax"]
  out.update(wall_jax=statistics.median(tj), wall_torch=statistics.median(tt),
             cpu_jax=statistics.median(cj), cpu_torch=statistics.median(ct),
             spread_jax=(min(tj), max(tj)), spread_torch=(min(tt), max(tt)))
  out["cpu_ratio"] = out["cpu_torch"] / out["cpu_jax"]
  return out


def main(argv):
  del argv
  unknown = [r for r in _ROWS.value if r not in ROWS]
  if unknown:
    raise app.UsageError(f"--rows: unknown {unknown}; expected some of {list(ROWS)}")
  xla_threads = xla_intra_op_threads()
  torch.set_num_threads(xla_threads or os.cpu_count() or 1)
  dev = jax.devices()[0]
  print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; host "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax "
        f"{jax.__version__} on {jax.device_count()} x {dev.device_kind} (XLA intra-op threads "
        f"{xla_threads or 'unknown'}); torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}), "
        f"transformers {transformers.__version__}; float32; median of {_STEPS.value} "
        f"interleaved steps; load average at start {os.getloadavg()[0]:.1f}", flush=True)
  results = {}
  for name in _ROWS.value:
    results[name] = r = run_row(ROWS[name], _STEPS.value, _WARMUP.value)
    unit = "tok/s" if ROWS[name].sampling else "s"
    extra = ("" if ROWS[name].sampling else
             f"; matmul params lmm_jax {r['params_jax']:.2f}M, GPT-2 {r['params_torch']:.2f}M")
    print(f"{name}: lmm_jax {r['jax']:.4g} {unit} (wall {r['spread_jax'][0]:.3g}-"
          f"{r['spread_jax'][1]:.3g} s, CPU {r['cpu_jax']:.3g} s), PyTorch {r['torch']:.4g} "
          f"{unit} (wall {r['spread_torch'][0]:.3g}-{r['spread_torch'][1]:.3g} s, CPU "
          f"{r['cpu_torch']:.3g} s), lmm_jax/peer speed {r['ratio']:.2f}x by wall, "
          f"{r['cpu_ratio']:.2f}x by CPU seconds{extra}; load {os.getloadavg()[0]:.1f}",
          flush=True)
  print("\n| what | peer (HF GPT-2, PyTorch): wall, CPU s | lmm_jax: wall, CPU s | speed ratio "
        "(wall) | ratio by CPU seconds |\n|---|---|---|---|---|")
  for name, r in results.items():
    row = ROWS[name]
    if row.sampling:
      peer = f"{r['torch']:,.0f} tokens/s, {r['cpu_torch']:.2f} CPU s"
      ours = f"{r['jax']:,.0f} tokens/s, {r['cpu_jax']:.2f} CPU s"
    else:
      peer = f"{r['torch']:.3f} s, {r['cpu_torch']:.3f} CPU s"
      ours = f"{r['jax']:.3f} s, {r['cpu_jax']:.3f} CPU s"
    print(f"| {row.label} | {peer} | {ours} | {r['ratio']:.2f}x | {r['cpu_ratio']:.2f}x |")
  print(f"\nload average at end {os.getloadavg()[0]:.1f} (a shared machine: other jobs ran too)")


if __name__ == "__main__":
  app.run(main)
