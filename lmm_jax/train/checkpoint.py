"""orbax checkpoints of a training run.

Layout: WORKDIR/checkpoints/<step>/ with the items
  params     the model parameters (a nested dict; sharded arrays)
  opt_state  the optimizer state
  train      {'step', 'rng'}
  data       the grain iterator state (JSON), taken synchronously at save time so that the
             asynchronous write cannot race the loop advancing the iterator; one file per process
             (`metadata` for a single process, `process_<i>-of-<n>.json` for several), since each
             process reads its own slice of the data.
Saves are asynchronous; the last `max_to_keep` are kept, and with `best_metric=(name, mode)`
(early stopping) also the best checkpoint by the metrics given to save() (orbax's BestN
preservation policy beside LatestN; `best_step` finds it). The tree items go through orbax's
StandardSave / StandardRestore; their on-disk format is PyTreeCheckpointHandler's, so checkpoints
written earlier with PyTreeSave restore unchanged.

Preemption: inside `with checkpointer.watch_preemption():`, `checkpointer.reached_preemption(step)`
after every step is True at one agreed step on all processes (jax.distributed's preemption sync);
the loop saves that step and stops.

Reading another run's checkpoints (one way for every caller):
  params, step = restore_latest_params(workdir, abstract_params)   # into given shardings
  structure, step = read_params_structure(workdir)                  # shapes, no arrays read
  params, step = load_params(workdir)                               # host numpy, as saved
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from typing import Any, Iterator

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"
_TREE_ITEMS = ("params", "opt_state", "train")
DATA_ITEM = "data"


def checkpoint_dir(workdir_or_dir: str) -> str:
  """A workdir's checkpoint directory, or the argument itself if it already is one."""
  sub = os.path.join(workdir_or_dir, CHECKPOINT_DIR)
  return sub if os.path.isdir(sub) else workdir_or_dir


def _data_filename(process_index: int, process_count: int) -> str:
  """This process's iterator-state file: orbax's JSON default for one process, as before."""
  return "metadata" if process_count == 1 else f"process_{process_index}-of-{process_count}.json"


def _leaf_paths(tree: Any) -> set[tuple[str, ...]]:
  return {tuple(str(getattr(k, "key", k)) for k in path)
          for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _preemption_service_running() -> bool:
  """True when jax.distributed runs its preemption sync manager (it owns SIGTERM then)."""
  return jax.distributed.is_initialized() and bool(jax.config.jax_enable_preemption_service)


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  for name in _TREE_ITEMS:
    standard = ocp.StandardCheckpointHandler()
    registry.add(name, ocp.args.StandardSave, standard)
    registry.add(name, ocp.args.StandardRestore, standard)
  # StandardRestore needs a target mirroring the saved tree (orbax 0.12.8 raises on a subtree and
  # rejects PLACEHOLDER leaves), so taking a fine-tuning run's backbone out of its parameters
  # needs PyTreeRestore(partial_restore=True); same on-disk format.
  registry.add("params", ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler())
  # Every process writes its own iterator state (primary_host=None: no primary-only write).
  data = ocp.JsonCheckpointHandler(
      _data_filename(jax.process_index(), jax.process_count()),
      multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=None))
  registry.add(DATA_ITEM, ocp.args.JsonSave, data)
  registry.add(DATA_ITEM, ocp.args.JsonRestore, data)
  return registry


class _Manager(ocp.CheckpointManager):
  """A CheckpointManager whose own reached_preemption(step) calls leave jax's agreement alone.

  orbax asks reached_preemption(step) inside save() and, on the primary process, from its finalize
  thread after an asynchronous save. Each ask records `step` as this process's position in jax's
  preemption agreement, so the thread's late ask could report a stale step and this process would
  miss the step that the others stop at (their collective save would then wait for it forever).
  Only the loop asks jax (agree_on_preemption, once per step); orbax gets the loop's answer.
  """

  agreed_step: int | None = None

  def reached_preemption(self, step: int) -> bool:
    return step == self.agreed_step

  def agree_on_preemption(self, step: int) -> bool:
    if super().reached_preemption(step):
      self.agreed_step = step
    return step == self.agreed_step


class Checkpointer:
  """A thin wrapper over ocp.CheckpointManager for the items of a training state."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
               read_only: bool = False, best_metric: tuple[str, str] | None = None):
    self.directory = os.path.abspath(directory)
    best: dict[str, Any] = {}
    if best_metric is not None:
      name, mode = best_metric
      if mode not in ("min", "max"):
        raise ValueError(f"best_metric mode {mode!r}: expected 'min' or 'max'")
      best = dict(best_fn=functools.partial(_metric_value, name), best_mode=mode)
      if not read_only:
        # The latest max_to_keep (resume) and, among the saves that carry metrics, the best one.
        best["preservation_policy"] = ocp.checkpoint_managers.AnyPreservationPolicy([
            ocp.checkpoint_managers.LatestN(n=max_to_keep),
            ocp.checkpoint_managers.BestN(get_metric_fn=best["best_fn"], reverse=mode == "min",
                                          n=1, keep_checkpoints_without_metrics=False)])
    # Read-only managers keep nothing and save nothing (set here, orbax warns when it overrides).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only or best_metric else max_to_keep,
        save_interval_steps=0 if read_only else 1, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save, **best)
    # Every item's handler is registered, so restoring or reading some items never finds the
    # others unrestorable (orbax warns per unregistered item).
    self.manager = _Manager(self.directory, options=options, handler_registry=_handler_registry())
    self._sigterm_received = False

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    """The best step by best_metric among the saves with metrics (None if none; needs
    best_metric)."""
    if not self.manager._track_best:  # pylint: disable=protected-access
      raise ValueError(f"{self.directory}: best_step() needs Checkpointer(best_metric=...)")
    return self.manager.best_step()  # orbax ranks only the checkpoints saved with metrics

  def metrics(self, step: int) -> dict[str, Any] | None:
    """The metrics saved with `step` (None if it was saved without)."""
    return self.manager.metrics(step)

  def save(self, step: int, state: dict[str, Any], data_state: dict[str, Any] | None,
           metrics: dict[str, float] | None = None) -> None:
    items = dict(params=ocp.args.StandardSave(state["params"]),
                 opt_state=ocp.args.StandardSave(state["opt_state"]),
                 train=ocp.args.StandardSave({"step": state["step"], "rng": state["rng"]}))
    if data_state is not None:
      items[DATA_ITEM] = ocp.args.JsonSave(data_state)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True, metrics=metrics)

  def restore(self, step: int, abstract_state: dict[str, Any], with_data: bool = True
              ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The full state at `step` (sharded like abstract_state) and the iterator state."""
    items = dict(params=ocp.args.StandardRestore(abstract_state["params"]),
                 opt_state=ocp.args.StandardRestore(abstract_state["opt_state"]),
                 train=ocp.args.StandardRestore({"step": abstract_state["step"],
                                                 "rng": abstract_state["rng"]}))
    has_data = with_data and self._has_data_state(step)
    if has_data:
      items[DATA_ITEM] = ocp.args.JsonRestore()
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    state = {"params": out["params"], "opt_state": out["opt_state"],
             "step": out["train"]["step"], "rng": out["train"]["rng"]}
    return state, (out[DATA_ITEM] if has_data else None)

  def _has_data_state(self, step: int) -> bool:
    """Whether `step` holds this process's iterator state; an error if it holds other processes'."""
    data_dir = os.path.join(self.directory, str(step), DATA_ITEM)
    if not os.path.isdir(data_dir):
      return False
    pindex, pcount = jax.process_index(), jax.process_count()
    if os.path.isfile(os.path.join(data_dir, _data_filename(pindex, pcount))):
      return True
    found = sorted(f for f in os.listdir(data_dir) if f != "commit_success.txt")
    raise FileNotFoundError(
        f"{data_dir}: no data iterator state for process {pindex} of {pcount} (found {found}); "
        "each process's input position is saved separately, so resume with the number of "
        "processes that saved it")

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only the parameters present in abstract_params (others in the checkpoint are skipped)."""
    saved, wanted = _leaf_paths(self.params_structure(step)), _leaf_paths(abstract_params)
    missing = sorted("/".join(p) for p in wanted - saved)
    if missing:
      raise ValueError(f"{self.directory}/{step}: checkpoint params lack {missing[:5]}"
                       f"{' ...' if len(missing) > 5 else ''}")
    if wanted == saved:
      args = ocp.args.StandardRestore(abstract_params)
    else:  # a subtree: see _handler_registry for why not StandardRestore
      args = ocp.args.PyTreeRestore(
          item=abstract_params,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_params),
          partial_restore=True)
    return self.manager.restore(step, args=ocp.args.Composite(params=args))["params"]

  def params_structure(self, step: int) -> Any:
    """The saved parameter tree's metadata (shapes, dtypes), without reading arrays."""
    meta = self.manager.item_metadata(step).get("params")
    if meta is None:
      raise FileNotFoundError(f"{self.directory}/{step}: no readable 'params' item")
    return meta.tree if hasattr(meta, "tree") else meta

  @contextlib.contextmanager
  def watch_preemption(self) -> Iterator[None]:
    """Makes reached_preemption(step) answer a preemption notice (SIGTERM) while inside.

    Under jax.distributed, jax's preemption sync manager catches SIGTERM on any process and the
    processes agree on one step (orbax's reached_preemption): no Python handler is installed, it
    would replace jax's. A single process without jax.distributed gets a handler setting a flag.
    """
    if _preemption_service_running():
      yield
      return
    if jax.process_count() > 1:
      logging.warning("jax.distributed's preemption service is off: a SIGTERM stops this process "
                      "without a checkpoint (the processes could not agree on a step to save)")
      yield
      return
    previous = None
    try:
      previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    except ValueError:  # not the main thread: no handler
      pass
    try:
      yield
    finally:
      if previous is not None:
        signal.signal(signal.SIGTERM, previous)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint and exiting")
    self._sigterm_received = True

  def reached_preemption(self, step: int) -> bool:
    """True at the step that every process saves and stops at after a preemption notice.

    Call it after every step (consecutive steps, on every process), including once with the
    starting step: jax's agreement takes the furthest step any process has reported, plus one.
    """
    if _preemption_service_running():
      return self.manager.agree_on_preemption(step)
    if self._sigterm_received:
      self.manager.agreed_step = step
    return self._sigterm_received

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _metric_value(name: str, metrics: dict[str, Any]) -> float:
  return float(metrics[name])


def best_step(workdir_or_dir: str, metric: str, mode: str) -> int | None:
  """The step of a run's best checkpoint by `metric` (saved with metrics), or None."""
  if not os.path.isdir(checkpoint_dir(workdir_or_dir)):
    return None
  ckpt = Checkpointer(checkpoint_dir(workdir_or_dir), read_only=True, best_metric=(metric, mode))
  try:
    return ckpt.best_step()
  finally:
    ckpt.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each array's sharding (restore targets)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


@contextlib.contextmanager
def reading(workdir_or_dir: str, step: int | None = None, *, hint: str = ""
            ) -> Iterator[tuple[Checkpointer, int]]:
  """A read-only Checkpointer on a run's checkpoints and the step to read (latest unless given).

  Raises FileNotFoundError naming the directory (and `hint`, e.g. what to run first) when there
  is no checkpoint.
  """
  ckpt = Checkpointer(checkpoint_dir(workdir_or_dir), read_only=True)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}" + (f": {hint}" if hint else ""))
    yield ckpt, step
  finally:
    ckpt.close()


def restore_latest_params(workdir_or_dir: str, abstract_params: Any, step: int | None = None, *,
                          hint: str = "") -> tuple[Any, int]:
  """(parameters, step) of a run's latest (or given) checkpoint.

  The parameters take abstract_params' shapes and shardings (ShapeDtypeStructs); saved
  parameters outside abstract_params are skipped.
  """
  with reading(workdir_or_dir, step, hint=hint) as (ckpt, step):
    return ckpt.restore_params(step, abstract_params), step


def read_params_structure(workdir_or_dir: str, step: int | None = None, *, hint: str = ""
                          ) -> tuple[Any, int]:
  """(saved parameter tree's metadata with .shape/.dtype leaves, step), reading no arrays."""
  with reading(workdir_or_dir, step, hint=hint) as (ckpt, step):
    return ckpt.params_structure(step), step


def load_params(workdir_or_dir: str, step: int | None = None) -> tuple[Any, int]:
  """(parameters as host numpy arrays, step) of a run's latest (or given) checkpoint."""
  with reading(workdir_or_dir, step) as (ckpt, step):
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                          ckpt.params_structure(step))
    params = ckpt.restore_params(step, target)
  return jax.tree.map(np.asarray, jax.device_get(params)), step
