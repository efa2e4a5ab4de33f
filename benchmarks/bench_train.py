r"""Training throughput of the pretraining presets: tokens/s, step time, peak memory (and MFU on
accelerators with a known peak FLOP/s).

  python -m benchmarks.bench_train --presets=demo,small
  python -m benchmarks.bench_train --presets=small,base --batch_size=64   # on a GPU
  python -m benchmarks.bench_train --presets=demo --finetune_buckets       # fine-tuning step time
                                                                           # padded vs bucketed

--finetune_buckets times the cost fine-tuning step (experiments/configs/cost.py) on batches of
history lengths drawn log-normally (median --median_length, sigma --length_sigma, clipped to
seq_len) at seq_len and at each of the preset's bucket lengths, sorts the drawn lengths into
batches as the pipeline does (windows of --bucket_window batches) and reports the mean step time
padded to seq_len and bucketed.

Batches are random packed timelines over a vocabulary of --vocab_size tokens (the model's cost
does not depend on the data), so no dataset is needed. The train step is the real one
(`lmm_jax.train.trainer.Trainer`: sharded jit, AOT-compiled, donated state).
"""

from __future__ import annotations

import resource
import time

from absl import app
from absl import flags
import jax
import numpy as np

from experiments.configs import cost as cost_config
from experiments.configs import pretrain as pretrain_config
from lmm_jax import conditions
from lmm_jax.data import pipeline
from lmm_jax.tasks.cost import CostTask
from lmm_jax.conventions import TokenKind
from lmm_jax.tasks.pretrain import PretrainTask
from lmm_jax.train import metrics as metrics_lib
from lmm_jax.train import trainer as trainer_lib

_PRESETS = flags.DEFINE_list("presets", ["demo", "small"], "Presets to measure.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one warm-up step).")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch; 0: the preset's (CPU: at most 8).")
_SEQ = flags.DEFINE_integer("seq_len", 0, "Sequence length; 0: the preset's.")
_VOCAB = flags.DEFINE_integer("vocab_size", 4096, "Vocabulary size of the random batches.")
_DTYPE = flags.DEFINE_string("dtype", "", "Compute dtype override (e.g. bfloat16).")
_FT = flags.DEFINE_bool("finetune_buckets", False, "Time the fine-tuning step padded vs bucketed.")
_MEDIAN = flags.DEFINE_float("median_length", 170.0, "Median history length (tokens).")
_SIGMA = flags.DEFINE_float("length_sigma", 1.2, "Log-normal sigma of history lengths (1.2: "
                             "18 percent past 512 tokens, as on the 8,000-patient world).")
_WINDOW = flags.DEFINE_integer("bucket_window", 16, "Batches sorted together by the pipeline.")


class _Vocab:

  def __init__(self, size: int):
    self.size = size
    self.kinds = np.full((size,), int(TokenKind.DIAGNOSIS), np.int8)


class _BenchTask(PretrainTask):

  def train_dataset(self, *, batch_size, shard_index, shard_count):
    raise RuntimeError("the benchmark feeds batches directly")


def _random_batch(rng: np.random.Generator, batch: int, seq_len: int, vocab: int
                  ) -> dict[str, np.ndarray]:
  """Rows packed with sequences of 1/4..1/2 row length (about 90% of tokens real)."""
  tokens = np.zeros((batch, seq_len), np.int32)
  seg = np.zeros((batch, seq_len), np.int32)
  pos = np.zeros((batch, seq_len), np.int32)
  for b in range(batch):
    start, s = 0, 1
    while start < seq_len * 0.9:
      n = min(int(rng.integers(seq_len // 4, seq_len // 2)), seq_len - start)
      tokens[b, start:start + n] = rng.integers(3, vocab, size=n)
      seg[b, start:start + n] = s
      pos[b, start:start + n] = np.arange(n)
      start, s = start + n, s + 1
  days = np.cumsum(rng.integers(0, 10, size=(batch, seq_len)), axis=1).astype(np.float32)
  return {"tokens": tokens, "segment_ids": seg, "positions": pos,
          "age": np.full((batch, seq_len), 55.0, np.float32), "days": days}


def bench(preset: str) -> dict[str, float]:
  config = pretrain_config.get_config(preset)
  on_cpu = jax.devices()[0].platform == "cpu"
  with config.unlocked():
    if _BATCH.value:
      config.batch_size = _BATCH.value
    elif on_cpu:
      config.batch_size = min(config.batch_size, 8)
    if _SEQ.value:
      config.seq_len = _SEQ.value
    if _DTYPE.value:
      config.model.dtype = _DTYPE.value
    if on_cpu:
      config.model.attention_impl = "xla"
      config.model.dtype = _DTYPE.value or "float32"
    config.progress = False
  task = _BenchTask(config, vocab=_Vocab(_VOCAB.value))
  trainer = trainer_lib.Trainer(config, task)
  rng = np.random.default_rng(0)
  batches = [_random_batch(rng, config.batch_size, config.seq_len, _VOCAB.value)
             for _ in range(2)]
  t0 = time.time()
  state = trainer.init_state(0)
  device_batches = [trainer.device_batch(b) for b in batches]
  compiled = trainer.compile(device_batches[0])
  compile_s = time.time() - t0
  state, out = trainer.train_step(state, device_batches[0])  # warm-up
  jax.block_until_ready(out)
  t0 = time.time()
  for i in range(_STEPS.value):
    state, out = trainer.train_step(state, device_batches[i % 2])
  jax.block_until_ready(out)
  step_s = (time.time() - t0) / _STEPS.value
  tokens = np.mean([task.tokens_in_batch(b) for b in batches])
  result = {"params_M": trainer.num_params / 1e6, "batch": config.batch_size,
            "seq_len": config.seq_len, "compile_s": compile_s, "step_s": step_s,
            "tokens_per_s": tokens / step_s}
  mem = compiled.memory_analysis()
  if mem is not None:
    result["compiled_peak_MiB"] = (mem.argument_size_in_bytes + mem.output_size_in_bytes +
                                   mem.temp_size_in_bytes - mem.alias_size_in_bytes) / 2**20
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    result["device_peak_MiB"] = stats["peak_bytes_in_use"] / 2**20
  result["host_peak_rss_MiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  peak = metrics_lib.peak_flops_per_device(config.peak_flops_per_device)
  flops = task.flops_per_token(trainer.num_params)
  if peak and flops:
    result["mfu"] = flops * result["tokens_per_s"] / (peak * jax.device_count())
  return result


def _task_batch(rng: np.random.Generator, lengths: np.ndarray, width: int, vocab: int
                ) -> dict[str, np.ndarray]:
  b = len(lengths)
  pos = np.broadcast_to(np.arange(width, dtype=np.int32), (b, width))
  seg = (pos < lengths[:, None]).astype(np.int32)
  cost = rng.gamma(0.5, 8000.0, size=b).astype(np.float32)
  return {"tokens": np.where(seg > 0, rng.integers(3, vocab, size=(b, width)), 0).astype(np.int32),
          "segment_ids": seg, "positions": np.where(seg > 0, pos, 0).astype(np.int32),
          "age": np.full((b, width), 55.0, np.float32),
          "days": np.cumsum(rng.integers(0, 10, size=(b, width)), axis=1).astype(np.float32),
          "length": lengths.astype(np.int32), "valid": np.ones(b, np.int32),
          "cost_next": cost, "cost_next_capped": np.minimum(cost, 250_000.0)}


def bench_finetune(preset: str) -> dict[str, float]:
  """Mean fine-tuning step time padded to seq_len vs length-bucketed (see the module doc)."""
  config = cost_config.get_config(preset)
  with config.unlocked():
    config.progress = False
    config.model.attention_impl = "xla"
  rng = np.random.default_rng(0)
  stats = {"cost": rng.gamma(0.5, 8000.0, 4096), "cost_capped": rng.gamma(0.5, 8000.0, 4096),
           "cond": (rng.random((4096, conditions.NUM_CONDITIONS)) < 0.1).astype(np.uint8)}
  task = CostTask(config, vocab=_Vocab(_VOCAB.value), stats=stats)
  trainer = trainer_lib.Trainer(config, task)
  seq, b = config.seq_len, config.batch_size
  buckets = pipeline.check_buckets(task.bucket_lengths(), seq)
  # The bucket of every batch of 50 windows, sorted as _BucketBatches does.
  n = 50 * _WINDOW.value * b
  lengths = np.clip(np.round(_MEDIAN.value * np.exp(_SIGMA.value * rng.standard_normal(n))),
                    8, seq).astype(int)
  counts = {w: 0 for w in buckets}
  for start in range(0, n, _WINDOW.value * b):
    window = np.sort(lengths[start:start + _WINDOW.value * b])
    for i in range(0, len(window), b):
      counts[pipeline.bucket_length(int(window[i:i + b].max()), buckets)] += 1
  state = trainer.init_state(0)
  step_s = {}
  for width in buckets:
    batch = trainer.device_batch(_task_batch(rng, np.minimum(lengths[:b], width), width,
                                             _VOCAB.value))
    trainer.compile(batch)
    state, out = trainer.train_step(state, batch)  # warm-up
    jax.block_until_ready(out)
    t0 = time.time()
    for _ in range(_STEPS.value):
      state, out = trainer.train_step(state, batch)
    jax.block_until_ready(out)
    step_s[width] = (time.time() - t0) / _STEPS.value
  total = sum(counts.values())
  result = {"params_M": trainer.num_params / 1e6, "batch": b, "seq_len": seq,
            "p_len_gt_256": float(np.mean(lengths > 256))}
  for width in buckets:
    result[f"step_s@{width}"] = step_s[width]
    result[f"share@{width}"] = counts[width] / total
  result["padded_step_s"] = step_s[seq]
  result["bucketed_step_s"] = sum(step_s[w] * counts[w] for w in buckets) / total
  result["speedup"] = result["padded_step_s"] / result["bucketed_step_s"]
  return result


def main(argv):
  del argv
  dev = jax.devices()[0]
  print(f"devices: {jax.device_count()} x {dev.device_kind} ({dev.platform})")
  for preset in _PRESETS.value:
    r = bench_finetune(preset) if _FT.value else bench(preset)
    print(f"{preset}: " + ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
        flush=True)


if __name__ == "__main__":
  app.run(main)
