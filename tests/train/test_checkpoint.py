"""Checkpointer on small trees: round trip, partial restore, older checkpoints, preemption."""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lmm_jax.train import checkpoint as ckpt_lib


def _state(seed: int = 0) -> dict:
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  params = {"backbone": {"w": jax.random.normal(k[0], (4, 3)), "b": jnp.arange(3.0)},
            "head": {"w": jax.random.normal(k[1], (3, 1))}}
  return {"params": params, "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params)},
          "step": jnp.int32(7), "rng": jax.random.PRNGKey(3)}


def _assert_equal(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_partial_restore_and_missing_params(tmp_path):
  state = _state()
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "c"))
  ckpt.save(7, state, {"index": 5})
  ckpt.wait()
  restored, data = ckpt.restore(7, ckpt_lib.abstract_like(state))
  _assert_equal(restored, state)
  assert data == {"index": 5}
  assert os.path.isfile(tmp_path / "c" / "7" / "data" / "metadata")  # one process: as before
  # A subtree (a fine-tuning run's backbone) restores alone; the rest of the saved tree is skipped.
  saved_backbone = state["params"]["backbone"]
  backbone = ckpt.restore_params(7, {"backbone": ckpt_lib.abstract_like(saved_backbone)})
  _assert_equal(backbone, {"backbone": saved_backbone})
  with pytest.raises(ValueError, match=r"checkpoint params lack \['backbone/v'\]"):
    ckpt.restore_params(7, {"backbone": {"v": jax.ShapeDtypeStruct((2,), jnp.float32)}})
  ckpt.close()


def test_checkpoints_written_with_pytree_save_still_restore(tmp_path):
  state = _state(1)
  old = ocp.CheckpointManager(  # what Checkpointer wrote before it used Standard args
      str(tmp_path / ckpt_lib.CHECKPOINT_DIR), item_handlers={
          "params": ocp.PyTreeCheckpointHandler(), "opt_state": ocp.PyTreeCheckpointHandler(),
          "train": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})
  old.save(7, args=ocp.args.Composite(
      params=ocp.args.PyTreeSave(state["params"]),
      opt_state=ocp.args.PyTreeSave(state["opt_state"]),
      train=ocp.args.PyTreeSave({"step": state["step"], "rng": state["rng"]}),
      data=ocp.args.JsonSave({"index": 2})))
  old.wait_until_finished()
  old.close()
  with ckpt_lib.reading(str(tmp_path)) as (ckpt, step):
    restored, data = ckpt.restore(step, ckpt_lib.abstract_like(state))
  _assert_equal(restored, state)
  assert data == {"index": 2}
  params, step = ckpt_lib.load_params(str(tmp_path))
  assert step == 7
  _assert_equal(params, state["params"])


def test_data_state_of_other_processes_is_refused(tmp_path):
  state = _state()
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "c"))
  ckpt.save(7, state, {"index": 5})
  ckpt.wait()
  data_dir = tmp_path / "c" / "7" / "data"
  os.rename(data_dir / "metadata", data_dir / "process_0-of-2.json")  # as two processes save it
  with pytest.raises(FileNotFoundError,
                     match=r"process 0 of 1 \(found \['process_0-of-2.json'\]\)"):
    ckpt.restore(7, ckpt_lib.abstract_like(state))
  ckpt.close()


def test_sigterm_without_jax_distributed_sets_the_local_notice(tmp_path):
  ckpt = ckpt_lib.Checkpointer(str(tmp_path / "c"))
  before = signal.getsignal(signal.SIGTERM)
  with ckpt.watch_preemption():
    assert not ckpt.reached_preemption(1)
    os.kill(os.getpid(), signal.SIGTERM)  # handled: the test process lives on
    assert ckpt.reached_preemption(2)
    assert ckpt.manager.reached_preemption(2)  # what orbax's own save() is told
  assert signal.getsignal(signal.SIGTERM) is before
  ckpt.close()
