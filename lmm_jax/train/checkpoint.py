"""orbax checkpoints of a training run.

Layout: WORKDIR/checkpoints/<step>/ with the items
  params     the model parameters (a nested dict; sharded arrays)
  opt_state  the optimizer state
  train      {'step', 'rng'}
  data       the grain iterator state (JSON), taken synchronously at save time so that the
             asynchronous write cannot race the loop advancing the iterator.
Saves are asynchronous; the last `max_to_keep` are kept.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir_or_dir: str) -> str:
  """A workdir's checkpoint directory, or the argument itself if it already is one."""
  sub = os.path.join(workdir_or_dir, CHECKPOINT_DIR)
  return sub if os.path.isdir(sub) else workdir_or_dir


class Checkpointer:
  """A thin wrapper over ocp.CheckpointManager for the items of a training state."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: dict[str, Any], data_state: dict[str, Any] | None) -> None:
    items = dict(params=ocp.args.StandardSave(state["params"]),
                 opt_state=ocp.args.StandardSave(state["opt_state"]),
                 train=ocp.args.StandardSave({"step": state["step"], "rng": state["rng"]}))
    if data_state is not None:
      items["data"] = ocp.args.JsonSave(data_state)
    self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state: dict[str, Any], with_data: bool = True
              ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The full state at `step` (sharded like abstract_state) and the iterator state."""
    items = dict(params=ocp.args.StandardRestore(abstract_state["params"]),
                 opt_state=ocp.args.StandardRestore(abstract_state["opt_state"]),
                 train=ocp.args.StandardRestore({"step": abstract_state["step"],
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
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_params)
    out = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.PyTreeRestore(
        item=abstract_params, restore_args=restore_args, partial_restore=True)))
    return out["params"]

  def params_structure(self, step: int) -> Any:
    """The saved parameter tree's metadata (shapes, dtypes), without reading arrays."""
    return self.manager.item_metadata(step)["params"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each array's sharding (restore targets)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def load_params(workdir_or_dir: str, step: int | None = None) -> tuple[Any, int]:
  """(parameters as host numpy arrays, step) of a run's latest (or given) checkpoint."""
  ckpt = Checkpointer(checkpoint_dir(workdir_or_dir), read_only=True)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {workdir_or_dir}")
    meta = ckpt.params_structure(step)
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device),
                          meta)
    restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=one_device), target)
    out = ckpt.manager.restore(step, args=ocp.args.Composite(params=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args)))
    return jax.tree.map(np.asarray, jax.device_get(out["params"])), step
  finally:
    ckpt.close()
