"""Test set-up: 8 simulated CPU devices (before JAX starts) and shared tiny datasets.

The datasets are made once per session by the real code paths: the synthesizer writes a small MEDS
world and the dataset builder turns it into records, so every test reads what real runs read.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from data_prep.configs import build_dataset as build_config
from tests import time_limit as time_limit_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update("jax_numpy_rank_promotion", "raise")

TINY_NUM_PATIENTS = 400
TINY_SEED = 7


def pytest_configure(config):
  config.addinivalue_line("markers", "time_limit(seconds): the test fails when it runs longer "
                          "than that (a hang); see tests/time_limit.py")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
  marker = item.get_closest_marker("time_limit")
  if marker is None:
    return (yield)
  with time_limit_lib.time_limit(marker.args[0], item.nodeid):
    return (yield)


@pytest.fixture(scope="session")
def tiny_meds_dir(tmp_path_factory) -> str:
  """A small synthetic MEDS dataset (with ground truth), shared by the whole session."""
  from lmm_jax.synth import synthesize  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("meds"))
  synthesize(out, num_patients=TINY_NUM_PATIENTS, seed=TINY_SEED, progress=False)
  return out


@pytest.fixture(scope="session")
def tiny_data_dir(tiny_meds_dir, tmp_path_factory) -> str:
  """Records (vocab.json, report.json, timeline/ and task/ shards) built from tiny_meds_dir."""
  from lmm_jax.data import build  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp("records"))
  config = build_config.get_config()
  config.num_workers = 1
  config.progress = False
  build.build_dataset(tiny_meds_dir, out, config)
  return out


@pytest.fixture(scope="session")
def pretrained(tiny_data_dir, tmp_path_factory) -> str:
  """A 2-step tiny pretraining run on tiny_data_dir (read only: tests copy it before editing)."""
  # pylint: disable=g-import-not-at-top
  from experiments.configs import pretrain as pretrain_config
  from lmm_jax import tasks
  from lmm_jax.train import trainer as trainer_lib
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  config = pretrain_config.get_config("tiny")
  config.update_from_flattened_dict({"data_dir": tiny_data_dir, "num_train_steps": 2,
                                     "checkpoint_every_steps": 2, "eval_batches": 1,
                                     "progress": False})
  trainer_lib.train_and_evaluate(config, workdir, tasks.make_task(config))
  return workdir
