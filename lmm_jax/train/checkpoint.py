"""orbax checkpoints of a training run.

Layout: WORKDIR/checkpoints/<step>/ with the items
  params     the model parameters (a nested dict; sharded arrays)
  opt_state  the optimizer state
  train      {'step', 'rng'}
  data       the grain iterator state (JSON), taken synchronously at save time so that the
             asynchronous write cannot race the loop advancing the iterator.
Saves are asynchronous; the last `max_to_keep` are kept.

Reading another run's checkpoints (one way for every caller):
  params, step = restore_latest_params(workdir, abstract_params)   # into given shardings
  structure, step = read_params_structure(workdir)                  # shapes, no arrays read
  params, step = load_params(workdir)                               # host numpy, as saved
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir_or_dir: str) -> str:
  """A workdir's checkpoint directory, or the argument itself if it already is one."""
  sub = os.path.join(workdir_or_dir, CHECKPOINT_DIR)
  return sub if os.path.isdir(sub) else workdir_or_dir


def _restore_args(abstract: Any, partial: bool = False) -> ocp.args.PyTreeRestore:
  return ocp.args.PyTreeRestore(
      item=abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
      partial_restore=partial)


class Checkpointer:
  """A thin wrapper over ocp.CheckpointManager for the items of a training state."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    # Read-only managers keep nothing and save nothing (set here, orbax warns when it overrides).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep,
        save_interval_steps=0 if read_only else 1, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save)
    # Every item's handler is registered, so restoring or reading some items never finds the
    # others unrestorable (orbax warns per unregistered item).
    handlers = {name: ocp.PyTreeCheckpointHandler() for name in ("params", "opt_state", "train")}
    handlers["data"] = ocp.JsonCheckpointHandler()
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict[str, Any], data_state: dict[str, Any] | None) -> None:
    items = dict(params=ocp.args.PyTreeSave(state["params"]),
                 opt_state=ocp.args.PyTreeSave(state["opt_state"]),
                 train=ocp.args.PyTreeSave({"step": state["step"], "rng": state["rng"]}))
    if data_state is not None:
      items["data"] = ocp.args.JsonSave(data_state)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state: dict[str, Any], with_data: bool = True
              ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The full state at `step` (sharded like abstract_state) and the iterator state."""
    items = dict(params=_restore_args(abstract_state["params"]),
                 opt_state=_restore_args(abstract_state["opt_state"]),
                 train=_restore_args({"step": abstract_state["step"],
                                      "rng": abstract_state["rng"]}))
    has_data = with_data and os.path.isdir(os.path.join(self.directory, str(step), "data"))
    if has_data:
      items["data"] = ocp.args.JsonRestore()
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    state = {"params": out["params"], "opt_state": out["opt_state"],
             "step": out["train"]["step"], "rng": out["train"]["rng"]}
    return state, (out["data"] if has_data else None)

  def restore_params(self, step: int, abstract_params: Any) -> Any:
    """Only the parameters present in abstract_params (others in the checkpoint are skipped)."""
    out = self.manager.restore(step, args=ocp.args.Composite(
        params=_restore_args(abstract_params, partial=True)))
    return out["params"]

  def params_structure(self, step: int) -> Any:
    """The saved parameter tree's metadata (shapes, dtypes), without reading arrays."""
    meta = self.manager.item_metadata(step).get("params")
    if meta is None:
      raise FileNotFoundError(f"{self.directory}/{step}: no readable 'params' item")
    return meta.tree if hasattr(meta, "tree") else meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


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
