"""Runs the tiny pretraining on random batches and kills itself mid-run.

  python -m tests.train.resume_worker WORKDIR KILL_AT_BATCH WAIT_FOR_CHECKPOINT_STEP [SIGNAL]

Before fetching batch KILL_AT_BATCH it waits until checkpoint WAIT_FOR_CHECKPOINT_STEP is complete
on disk, then sends itself SIGNAL (default 9, SIGKILL: no clean-up, no final save, like a crashed
job; 15, SIGTERM: a preemption notice, which the trainer answers with a save and a clean exit).
"""

import os
import sys
import time

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_numpy_rank_promotion", "raise")

from lmm_jax.train import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from tests.train import helpers  # pylint: disable=g-import-not-at-top,wrong-import-position

RESUME_OVERRIDES = dict(num_train_steps=12, checkpoint_every_steps=4, log_every_steps=1,
                        mesh_shape=(2, 2, 2), eval_batches=0)


class _KillingBatches(helpers.RandomBatches):

  def __init__(self, *args, kill_at: int, ckpt_dir: str, signum: int, **kw):
    super().__init__(*args, **kw)
    self.kill_at, self.ckpt_dir, self.signum = kill_at, ckpt_dir, signum

  def __next__(self):
    if self.index == self.kill_at:
      deadline = time.time() + 120
      while not os.path.isdir(self.ckpt_dir) and time.time() < deadline:
        time.sleep(0.05)
      os.kill(os.getpid(), self.signum)
    return super().__next__()


class KillingTask(helpers.RandomPretrainTask):

  def __init__(self, config, kill_at: int, ckpt_dir: str, signum: int):
    super().__init__(config)
    self.kill_at, self.ckpt_dir, self.signum = kill_at, ckpt_dir, signum

  def train_dataset(self, *, batch_size, shard_index, shard_count):
    return _KillingBatches(self.config.seed + 1000 * shard_index, batch_size, self.config.seq_len,
                           self.vocab.size, kill_at=self.kill_at, ckpt_dir=self.ckpt_dir,
                           signum=self.signum)


def main():
  workdir, kill_at, wait_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  signum = int(sys.argv[4]) if len(sys.argv) > 4 else 9
  config = helpers.tiny_config(**RESUME_OVERRIDES)
  ckpt_dir = os.path.join(workdir, "checkpoints", str(wait_step))
  out = trainer.train_and_evaluate(config, workdir, KillingTask(config, kill_at, ckpt_dir, signum))
  print(f"stopped at step {out['step']}")


if __name__ == "__main__":
  main()
