"""One process of a two-process tiny pretraining over jax.distributed (localhost).

  python -m tests.train.multihost_worker WORKDIR TERM_PROCESS TERM_AT_BATCH

The environment gives the distributed set-up (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID: config.distributed=True reads them) and this process's CPU devices (XLA_FLAGS).
Process TERM_PROCESS sends itself SIGTERM before fetching batch TERM_AT_BATCH (-1: never), then
slows every later batch, so that jax's preemption agreement (its SIGTERM listener polls once a
second) settles long before the run would end. Each process's iterator state names its shard, and
restoring another process's state fails. Prints "process <i> stopped at step <n>".
"""

import os
import signal
import sys
import time

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

from lmm_jax.train import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.train import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_STEPS = 24
OVERRIDES = dict(num_train_steps=NUM_STEPS, checkpoint_every_steps=1000, log_every_steps=1,
                 mesh_shape=(1, -1, 1), eval_batches=0, distributed=True)
SLOW_BATCH_S = 0.25


class _ShardBatches(helpers.RandomBatches):
  """Random batches of one shard; optionally a SIGTERM to this process at one batch."""

  def __init__(self, *args, shard: int, term_at: int, **kw):
    super().__init__(*args, **kw)
    self.shard, self.term_at = shard, term_at

  def __next__(self):
    if self.index == self.term_at:
      os.kill(os.getpid(), signal.SIGTERM)
    if 0 <= self.term_at <= self.index:
      time.sleep(SLOW_BATCH_S)
    return super().__next__()

  def get_state(self):
    return dict(super().get_state(), shard=self.shard)

  def set_state(self, state):
    if state["shard"] != self.shard:
      raise ValueError(f"shard {self.shard} given the iterator state of shard {state['shard']}")
    super().set_state(state)


class _ShardTask(helpers.RandomPretrainTask):

  def __init__(self, config, term_process: int, term_at: int):
    super().__init__(config)
    self.term_process, self.term_at = term_process, term_at

  def train_dataset(self, *, batch_size, shard_index, shard_count):
    term_at = self.term_at if shard_index == self.term_process else -1
    return _ShardBatches(self.config.seed + 1000 * shard_index, batch_size, self.config.seq_len,
                         self.vocab.size, shard=shard_index, term_at=term_at)


def main():
  workdir, term_process, term_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  config = helpers.tiny_config(**OVERRIDES)
  out = trainer.train_and_evaluate(config, workdir, _ShardTask(config, term_process, term_at))
  print(f"process {jax.process_index()} stopped at step {out['step']}", flush=True)


if __name__ == "__main__":
  main()
