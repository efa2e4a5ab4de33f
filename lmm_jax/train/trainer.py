"""The sharded, jitted training loop shared by pretraining and fine-tuning.

    metrics = train_and_evaluate(config, workdir, task)

Set-up follows "shapes first, then shardings, then a jitted init": the model is built under
`jax.eval_shape`, the logical axis names on its parameters become NamedShardings through the
config's rules (`lmm_jax.sharding`), and the state is created by a jit whose out_shardings place
every parameter and optimizer moment where it belongs (nothing is materialized unsharded). The train
step is `xla_options.jit(step, in_shardings, out_shardings, donate_argnums=0)` (jax.jit with the
backend's compiler options), compiled ahead of time with
its memory analysis printed before its first step.

Jit contract: one compile per batch shape. Packed timelines always have [B, seq_len]; TASK batches
with config.bucket_lengths have [B, bucket] for each bucket length (pipeline.make_dataset), so the
train step is compiled once per bucket (cached by the batch's shapes and dtypes) and the eval step
(a plain jax.jit) traces once per bucket too. Nothing else varies between steps.

Training state: {'step': int32, 'params': nested dict, 'opt_state': optax state, 'rng': uint32[2]}.
Per-step randomness (dropout) is fold_in(rng, step), so a resumed run draws the same numbers.

Resume order (first that applies):
  1. a checkpoint in WORKDIR/checkpoints (a restarted or preempted run continues, data included);
  2. config.resume_from: a workdir or checkpoint directory (full state and data iterator);
  3. config.init_from: a pretraining workdir; only the backbone parameters are loaded (into
     params[task.backbone_key], or all params when the task has no backbone key), heads and
     optimizer start fresh;
  4. scratch.

Checkpoints are saved asynchronously every config.checkpoint_every_steps, at the end, and on
SIGTERM (preemption), keeping the last config.keep_checkpoints.

Early stopping (config.early_stopping.patience > 0, `lmm_jax.train.early_stopping`): every
evaluation (each eval_every_steps and the last step) saves a checkpoint carrying the evaluated
metric, the best of them is kept beside the latest, and training stops once `patience`
evaluations in a row have not improved it by more than min_delta; prediction restores the best. A preemption notice reaching any
one process stops all of them after the same step, saved together (Checkpointer.reached_preemption).
A NaN/Inf loss aborts with FloatingPointError before anything is saved, leaving the last good
checkpoint intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging as std_logging
import math
import os
import time
from typing import Any, Iterable, Mapping

from absl import logging
from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax
import tqdm

from lmm_jax import runs
from lmm_jax import sharding
from lmm_jax import xla_options
from lmm_jax.model import transformer
from lmm_jax.train import checkpoint as ckpt_lib
from lmm_jax.train import early_stopping as es_lib
from lmm_jax.train import metrics as metrics_lib
from lmm_jax.train import optimizer as opt_lib
from lmm_jax.train.task import Task

_CONSOLE_KEYS = ("train_loss", "grad_norm", "lr", "tokens_per_s", "eval_loss", "eval_acc1")


class _QuietLibraries(std_logging.Filter):
  """Drops orbax's per-save INFO chatter from the console (warnings still show)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


_QUIET = _QuietLibraries()


def _maybe_initialize_distributed(config: ml_collections.ConfigDict) -> None:
  if config.get("distributed", False) and not jax.distributed.is_initialized():
    # Explicit JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, else jax's cluster
    # auto-detection (SLURM, Open MPI, Cloud TPU metadata, Kubernetes).
    kwargs = {}
    if "JAX_NUM_PROCESSES" in os.environ and "JAX_PROCESS_ID" in os.environ:
      kwargs = dict(coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
                    num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                    process_id=int(os.environ["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def _host_means(sums: Mapping[str, Any], weights: Mapping[str, Any], prefix: str
                ) -> dict[str, float]:
  out = {}
  for k, s in sums.items():
    w = float(weights[k])
    if w > 0:
      out[prefix + k] = float(s) / w
  return out


@dataclasses.dataclass
class StepResult:
  step: int
  metrics: dict[str, Any]      # device arrays until read
  tokens: int
  num_examples: int


class Trainer:
  """Mesh, shardings, optimizer and compiled steps for one task and config."""

  def __init__(self, config: ml_collections.ConfigDict, task: Task,
               mesh: jax.sharding.Mesh | None = None):
    self.config = config
    self.task = task
    self.mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh_shape,
                                                                 config.mesh_axes)
    self.rules = tuple(tuple(r) for r in config.logical_rules)
    self.vocab_multiple = sharding.vocab_multiple(config.vocab_multiple, self.mesh, self.rules)
    self.batch_shards = sharding.axis_size(self.mesh, "batch", self.rules)
    self.accum = int(config.optimizer.grad_accum_steps)
    if config.batch_size % jax.process_count():
      raise ValueError(f"batch_size={config.batch_size} is not divisible by "
                       f"{jax.process_count()} processes")
    if config.batch_size % (self.batch_shards * self.accum):
      raise ValueError(f"batch_size={config.batch_size} must be a multiple of the batch shards "
                       f"({self.batch_shards}) times grad_accum_steps ({self.accum})")

    # Shapes first: the model under eval_shape gives the graph, shapes and logical axes.
    abstract_model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0), self.vocab_multiple))
    self.graphdef, abstract_vars = nnx.split(abstract_model)
    self.logical_axes = sharding.logical_axes(abstract_vars)
    self.param_labels = task.param_labels(nnx.to_pure_dict(abstract_vars))
    self.tx, self.schedule = opt_lib.make_optimizer(config.optimizer, config.num_train_steps,
                                                    self.param_labels)
    self.abstract_state = jax.eval_shape(self._init_fn, jax.random.PRNGKey(0))
    self.num_params = transformer.count_params(self.abstract_state["params"])

    # Then shardings: parameters by their logical axes; the optimizer's params-shaped state
    # (moments) by the parameters' shardings, its scalars replicated.
    params_sh = sharding.tree_shardings(self.abstract_state["params"], self.logical_axes,
                                        self.mesh, self.rules)
    replicated = NamedSharding(self.mesh, P())
    self.state_shardings = {
        "step": replicated, "rng": replicated, "params": params_sh,
        "opt_state": opt_lib.opt_state_shardings(self.tx, self.abstract_state["opt_state"],
                                                 params_sh, replicated)}
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        self.abstract_state, self.state_shardings)
    # Then a jitted init that creates every array already sharded.
    platform = xla_options.mesh_platform(self.mesh)
    self._init_jit = xla_options.jit(self._init_fn, platform=platform,
                                     out_shardings=self.state_shardings)
    self._eval_jit = xla_options.jit(self._eval_step, platform=platform)
    self._compiled: dict[tuple, Any] = {}   # batch signature -> compiled train step

  # ----------------------------------------------------------------------------------------------
  # Pure functions (traced under jit).

  def _init_fn(self, key: jax.Array) -> dict[str, Any]:
    params_key, rng = jax.random.split(key)
    model = self.task.build_model(nnx.Rngs(params=params_key), self.vocab_multiple)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": self.tx.init(params), "rng": rng}

  def model(self, params: Any) -> nnx.Module:
    """The nnx model holding these parameters (works on tracers and on concrete arrays)."""
    return nnx.merge(self.graphdef, params)

  def _loss(self, params: Any, batch: Mapping[str, jax.Array], rng: jax.Array):
    return self.task.loss_fn(self.model(params), batch, train=True, rng=rng)

  def _train_step(self, state: dict[str, Any], batch: Mapping[str, jax.Array]):
    params = state["params"]
    rng = jax.random.fold_in(state["rng"], state["step"])
    grad_fn = jax.value_and_grad(self._loss, has_aux=True)
    if self.accum == 1:
      (_, metrics), grads = grad_fn(params, batch, rng)
    else:
      # Microbatch i takes rows i, i+k, i+2k, ...: each device keeps its own rows.
      k = self.accum
      micro = jax.tree.map(
          lambda x: jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1), batch)

      def body(carry, xs):
        g_acc, m_acc = carry
        mb, i = xs
        (_, m), g = grad_fn(params, mb, jax.random.fold_in(rng, i))
        w = m["loss"][1]
        g_acc = jax.tree.map(lambda a, b: a + w * b, g_acc, g)
        m_acc = jax.tree.map(jnp.add, m_acc, m)
        return (g_acc, m_acc), None

      zeros_g = jax.tree.map(jnp.zeros_like, params)
      _, m_shape = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), rng)[0]
      zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m_shape)
      (g_sum, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m), (micro, jnp.arange(k)))
      total = jnp.maximum(metrics["loss"][1], 1.0)
      grads = jax.tree.map(lambda g: g / total, g_sum)
    updates, opt_state = self.tx.update(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    out = {"sums": {k: v[0] for k, v in metrics.items()},
           "weights": {k: v[1] for k, v in metrics.items()},
           "grad_norm": optax.tree.norm(grads),
           "param_norm": optax.tree.norm(params),
           "lr": self.schedule(state["step"])}
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state,
                 "rng": state["rng"]}
    return new_state, out

  def _eval_step(self, params: Any, batch: Mapping[str, jax.Array]):
    metrics, outputs = self.task.eval_step(self.model(params), batch)
    return ({k: v[0] for k, v in metrics.items()}, {k: v[1] for k, v in metrics.items()},
            outputs)

  # ----------------------------------------------------------------------------------------------
  # Host-side API.

  def init_state(self, seed: int) -> dict[str, Any]:
    with sharding.activation_rules(self.mesh, self.rules):
      return self._init_jit(jax.random.PRNGKey(seed))

  def device_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    missing = [k for k in self.task.batch_keys if k not in batch]
    if missing:
      raise KeyError(f"batch lacks {missing} needed by task {self.task.name!r}")
    return sharding.put_batch({k: np.asarray(batch[k]) for k in self.task.batch_keys},
                              self.mesh, self.rules)

  @staticmethod
  def batch_signature(batch: Mapping[str, Any]) -> tuple:
    """What a compiled train step is specialized to: each key's shape and dtype."""
    return tuple(sorted((k, tuple(x.shape), str(x.dtype)) for k, x in batch.items()))

  def is_compiled(self, batch: Mapping[str, Any]) -> bool:
    return self.batch_signature(batch) in self._compiled

  def compile(self, batch: Mapping[str, jax.Array]) -> Any:
    """Ahead-of-time compilation of the train step for this batch shape; logs its memory."""
    batch_shardings = {k: sharding.batch_sharding(self.mesh, self.rules, x.ndim)
                       for k, x in batch.items()}
    abstract_batch = {k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_shardings[k])
                      for k, x in batch.items()}
    train_jit = xla_options.jit(self._train_step, platform=xla_options.mesh_platform(self.mesh),
                                donate_argnums=0,
                                in_shardings=(self.state_shardings, batch_shardings),
                                out_shardings=(self.state_shardings, NamedSharding(self.mesh, P())))
    with sharding.activation_rules(self.mesh, self.rules):
      lowered = train_jit.lower(self.abstract_state, abstract_batch)
    compiled = lowered.compile()
    self._compiled[self.batch_signature(batch)] = compiled
    mem = compiled.memory_analysis()
    if mem is not None:
      fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes")
      logging.info("train step %s memory per device (MiB): %s", batch["tokens"].shape
                   if "tokens" in batch else "", ", ".join(
          f"{f.replace('_size_in_bytes', '')} {getattr(mem, f, 0) / 2**20:.1f}" for f in fields))
    return compiled

  def train_step(self, state: dict[str, Any], batch: Mapping[str, jax.Array]):
    key = self.batch_signature(batch)
    if key not in self._compiled:
      self.compile(batch)
    return self._compiled[key](state, batch)

  def eval_outputs(self, params: Any, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """The task's per-example eval outputs on one host batch (the compiled eval step)."""
    with sharding.activation_rules(self.mesh, self.rules):
      return self._eval_jit(params, self.device_batch(batch))[2]

  def evaluate(self, params: Any, batches: Iterable[Mapping[str, np.ndarray]],
               max_batches: int = -1) -> dict[str, float]:
    """Aggregated eval metrics over the batches ('eval_' prefix is added by the caller)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    outputs: dict[str, list[np.ndarray]] = {}
    for i, batch in enumerate(batches):
      if 0 <= max_batches <= i:
        break
      with sharding.activation_rules(self.mesh, self.rules):
        s, w, out = self._eval_jit(params, self.device_batch(batch))
      for k in s:
        sums[k] = sums.get(k, 0.0) + float(s[k])
        weights[k] = weights.get(k, 0.0) + float(w[k])
      for k, v in out.items():
        if jax.process_count() > 1:
          v = multihost_utils.process_allgather(v, tiled=True)
        outputs.setdefault(k, []).append(np.asarray(v))
    means = _host_means(sums, weights, "")
    return self.task.finalize_eval(means, {k: np.concatenate(v) for k, v in outputs.items()})

  # ----------------------------------------------------------------------------------------------
  # Resume.

  def restore_or_init(self, checkpointer: ckpt_lib.Checkpointer
                      ) -> tuple[dict[str, Any], dict[str, Any] | None, str]:
    """(state, data iterator state or None, where it came from); see the module docstring."""
    c = self.config
    step = checkpointer.latest_step()
    if step is not None:
      state, data = checkpointer.restore(step, self.abstract_state)
      return state, data, f"checkpoint step {step} in {checkpointer.directory}"
    if c.resume_from:
      with ckpt_lib.reading(c.resume_from, hint=f"config.resume_from={c.resume_from!r}"
                            ) as (src, step):
        state, data = src.restore(step, self.abstract_state)
      return state, data, f"resume_from {c.resume_from} step {step}"
    state = self.init_state(c.seed)
    if c.init_from:
      state["params"] = self.load_backbone(state["params"], c.init_from)
      return state, None, f"init_from {c.init_from} (backbone only)"
    return state, None, "scratch"

  def load_backbone(self, params: dict[str, Any], init_from: str) -> dict[str, Any]:
    """params with the backbone subtree replaced by the latest parameters of run `init_from`."""
    key = self.task.backbone_key
    target = params if key is None else params[key]
    restored = runs.load_backbone(init_from, target, data_dir=self.config.data_dir,
                                  nested_key=key, hint=f"config.init_from={init_from!r}")
    if key is None:
      return restored
    out = dict(params)
    out[key] = restored
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       task: Task) -> dict[str, float]:
  """Trains (resuming when possible), evaluates, checkpoints; returns the final metrics."""
  _maybe_initialize_distributed(config)
  if _QUIET not in logging.get_absl_logger().filters:
    logging.get_absl_logger().addFilter(_QUIET)
  workdir = os.path.abspath(workdir)
  is_main = jax.process_index() == 0
  trainer = Trainer(config, task)
  runs.record_run(workdir, config, vocab_size=task.vocab.size,
                  vocab_multiple=trainer.vocab_multiple, num_params=trainer.num_params)
  logging.info("task: %s", task.describe())
  logging.info("mesh %s over %d devices (%d processes); model parameters: %s",
               dict(trainer.mesh.shape), jax.device_count(), jax.process_count(),
               f"{trainer.num_params:,}")
  if is_main:
    print(f"{task.name}: {trainer.num_params:,} parameters "
          f"({trainer.num_params / 1e6:.2f}M), mesh {dict(trainer.mesh.shape)}", flush=True)

  es = es_lib.EarlyStopping.from_config(config)
  checkpointer = ckpt_lib.Checkpointer(
      os.path.join(workdir, ckpt_lib.CHECKPOINT_DIR), max_to_keep=config.keep_checkpoints,
      best_metric=None if es is None else (es.metric, es.mode))
  writer = metrics_lib.MetricWriter(workdir)
  try:
    return _run(config, trainer, checkpointer, writer, is_main, es)
  finally:
    checkpointer.close()  # waits for in-flight saves: the last checkpoint is complete
    writer.close()


def _run(config: ml_collections.ConfigDict, trainer: Trainer, checkpointer: ckpt_lib.Checkpointer,
         writer: metrics_lib.MetricWriter, is_main: bool,
         es: es_lib.EarlyStopping | None = None) -> dict[str, float]:
  task = trainer.task
  state, data_state, source = trainer.restore_or_init(checkpointer)
  start_step = int(state["step"])
  logging.info("starting at step %d from %s", start_step, source)
  trimmed = writer.trim_after(start_step)
  if trimmed:
    logging.info("metrics.jsonl: dropped %d rows logged after step %d before the restart",
                 trimmed, start_step)
  num_steps = config.num_train_steps
  pcount, pindex = jax.process_count(), jax.process_index()
  local_batch = config.batch_size // pcount
  eval_local_batch = max(config.eval_batch_size // pcount, 1)

  def run_eval(params, step) -> dict[str, float]:
    batches = task.eval_dataset(batch_size=eval_local_batch, shard_index=pindex,
                                shard_count=pcount)
    if batches is None:
      return {}
    t0 = time.time()
    m = trainer.evaluate(params, batches, config.eval_batches)
    out = {f"eval_{k}": v for k, v in m.items()}
    out["eval_time_s"] = time.time() - t0
    writer.write(step, out)
    if is_main:
      metrics_lib.console(step, num_steps, out, _CONSOLE_KEYS + ("eval_perplexity",))
    return out

  if es is not None:
    best = checkpointer.best_step()
    es.resume(best, None if best is None else checkpointer.metrics(best),
              es_lib.eval_steps(num_steps, config.eval_every_steps), start_step)

  def early_stop_summary() -> dict[str, float]:
    return {} if es is None else {"best_step": es.best_step, f"best_{es.metric}": es.best_value,
                                  "stopped_early": float(es.stopped)}

  final: dict[str, float] = {}
  if es is not None and es.stopped and start_step < num_steps:
    logging.info("early stopping already reached at step %d: %s", start_step, es.summary())
    final.update(run_eval(state["params"], start_step))
    final.update(early_stop_summary())
    final["step"] = start_step
    return final
  if start_step >= num_steps:
    logging.info("already trained to step %d (num_train_steps=%d)", start_step, num_steps)
    final.update(run_eval(state["params"], start_step))
    final["step"] = start_step
    return final

  data_iter = iter(task.train_dataset(batch_size=local_batch, shard_index=pindex,
                                      shard_count=pcount))
  if data_state is not None:
    data_iter.set_state(data_state)

  peak = metrics_lib.peak_flops_per_device(config.get("peak_flops_per_device", 0.0))
  flops_tok = task.flops_per_token(trainer.num_params)
  progress = None
  if is_main and config.get("progress", True):
    progress = tqdm.tqdm(total=num_steps, initial=start_step, desc=task.name, unit="step")

  pending: StepResult | None = None
  window = {"t": time.time(), "tokens": 0, "steps": 0}
  last_train: dict[str, float] = {}

  def finish(res: StepResult) -> None:
    """Reads a dispatched step's metrics (blocks on it), checks the loss, logs."""
    nonlocal last_train
    sums = jax.device_get(res.metrics["sums"])
    weights = jax.device_get(res.metrics["weights"])
    loss_w = float(weights["loss"])
    loss = float(sums["loss"]) / loss_w if loss_w > 0 else 0.0
    values = {"loss": loss, "gradient norm": float(res.metrics["grad_norm"]),
              "parameter norm": float(res.metrics["param_norm"])}
    bad = [f"{k} {v}" for k, v in values.items() if not math.isfinite(v)]
    if bad:
      raise FloatingPointError(
          f"non-finite {', '.join(bad)} at step {res.step} (loss {loss}, gradient norm "
          f"{values['gradient norm']}, parameter norm {values['parameter norm']}); stopping "
          f"without saving. Last good checkpoint: step {checkpointer.latest_step()} in "
          f"{checkpointer.directory}")
    window["tokens"] += res.tokens
    window["steps"] += 1
    if progress is not None:
      progress.update(1)
    if res.step % config.log_every_steps and res.step != num_steps:
      return
    elapsed = max(time.time() - window["t"], 1e-9)
    m = _host_means(sums, weights, "train_")
    m["grad_norm"] = float(res.metrics["grad_norm"])
    m["param_norm"] = float(res.metrics["param_norm"])
    m["lr"] = float(res.metrics["lr"])
    m["step_time_s"] = elapsed / window["steps"]
    m["tokens_per_s"] = window["tokens"] / elapsed
    m["examples_per_s"] = res.num_examples * window["steps"] / elapsed
    if flops_tok and peak:
      m["mfu"] = flops_tok * m["tokens_per_s"] / (peak * jax.device_count())
    window.update(t=time.time(), tokens=0, steps=0)
    last_train = m
    writer.write(res.step, m)
    if is_main:
      metrics_lib.console(res.step, num_steps, m, _CONSOLE_KEYS)

  with contextlib.ExitStack() as stack:
    if hasattr(data_iter, "close"):
      stack.callback(data_iter.close)  # grain worker processes, if any
    stack.enter_context(checkpointer.watch_preemption())
    # The agreement on a preemption step counts from the last step each process reported.
    checkpointer.reached_preemption(start_step)
    for step in range(start_step, num_steps):
      batch_np = next(data_iter)
      batch = trainer.device_batch(batch_np)
      if not trainer.is_compiled(batch):  # once per bucket shape; not counted as step time
        t_compile = time.time()
        trainer.compile(batch)
        window["t"] += time.time() - t_compile
      tokens = task.tokens_in_batch(batch_np) * pcount
      state, out = trainer.train_step(state, batch)  # dispatched, not awaited
      if pending is not None:
        finish(pending)  # step t-1 while step t runs
      done = step + 1
      pending = StepResult(done, out, tokens, config.batch_size)
      stop = checkpointer.reached_preemption(done)  # the same answer on every process
      save = done % config.checkpoint_every_steps == 0 or done == num_steps or stop
      # With early stopping the last step's evaluation runs here, so its checkpoint is ranked.
      evaluate = bool(config.eval_every_steps) and done % config.eval_every_steps == 0 and (
          done != num_steps or es is not None)
      if (save or evaluate) and pending is not None:
        finish(pending)  # a checkpoint only after its step's loss was checked
        pending = None
      ckpt_metrics = None
      if evaluate:
        out = run_eval(state["params"], done)
        final.update(out)
        window["t"] = time.time()
        if es is not None:
          # Only a new best carries metrics: orbax's BestN then keeps exactly the early-stopping
          # best (an evaluation better by less than min_delta is no new best).
          if es.update(done, out):
            ckpt_metrics = {es.metric: out[es.metric]}
          writer.write(done, {"early_stopping_bad_evals": es.bad_evals})
          save = True
      if es is not None and not evaluate and done == num_steps:
        # eval_every_steps does not divide num_steps: the final evaluation is ranked too.
        out = run_eval(state["params"], done)
        final.update(out)
        if es.update(done, out):
          ckpt_metrics = {es.metric: out[es.metric]}
      if save:
        checkpointer.save(done, state,
                          data_iter.get_state() if hasattr(data_iter, "get_state") else None,
                          metrics=ckpt_metrics)
      if es is not None and es.stopped and done < num_steps:
        msg = f"early stop at step {done}/{num_steps}: {es.summary()}"
        logging.info(msg)
        if progress is not None:
          progress.write(msg)
        break
      if stop:
        logging.warning("preempted at step %d; checkpoint saved", done)
        break
    if pending is not None:
      finish(pending)
  if progress is not None:
    progress.close()
  step = int(state["step"])
  if step == num_steps and es is None:
    final.update(run_eval(state["params"], step))
  final.update(early_stop_summary())
  final.update(last_train)
  final["step"] = step
  return final
