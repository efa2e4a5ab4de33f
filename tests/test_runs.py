"""One way to load a run (lmm_jax.runs): config, task, model and parameters, and its refusals."""

import json
import os
import shutil

from flax import traverse_util
import jax
import numpy as np
import pytest

from experiments.configs import chronic as chronic_config
from experiments.configs import cost as cost_config
from experiments.configs import pretrain as pretrain_config
from lmm_jax import runs
from lmm_jax import tasks
from lmm_jax.data import records
from lmm_jax.tasks import registry
from lmm_jax.train import checkpoint as ckpt_lib
from lmm_jax.train import trainer as trainer_lib


def _train(config, workdir: str) -> str:
  trainer_lib.train_and_evaluate(config, workdir, tasks.make_task(config))
  return workdir


@pytest.fixture(scope="module")
def finetuned(tiny_data_dir, pretrained, tmp_path_factory) -> str:
  config = cost_config.get_config("tiny")
  config.update_from_flattened_dict({"data_dir": tiny_data_dir, "init_from": pretrained,
                                     "num_train_steps": 2, "checkpoint_every_steps": 2,
                                     "progress": False, "stats_examples": 64})
  return _train(config, str(tmp_path_factory.mktemp("cost")))


def test_load_run_gives_config_task_and_the_saved_parameters(pretrained, finetuned):
  for workdir, task_type in ((pretrained, tasks.PretrainTask), (finetuned, tasks.CostTask)):
    run = runs.load_run(workdir)
    assert isinstance(run.task, task_type) and run.step == 2
    assert run.config.task == json.load(open(os.path.join(workdir, runs.RUN_FILE)))["task"]
    saved, _ = ckpt_lib.load_params(workdir)
    got = traverse_util.flatten_dict(jax.device_get(run.params))
    want = traverse_util.flatten_dict(saved)
    assert set(got) == set(want)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg="/".join(k))
    # The parameters sit on one device unless a mesh is asked for.
    assert {len(x.sharding.device_set) for x in jax.tree.leaves(run.params)} == {1}
  model = runs.load_run(finetuned).model
  assert model.head_cfg.num_outputs == len(runs.load_run(finetuned).task.output_bias())


def test_load_run_onto_a_mesh_shards_the_parameters(pretrained):
  mesh = jax.make_mesh((2, 4, 1), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  run = runs.load_run(pretrained, mesh=mesh)
  embedding = run.params["embedding"]
  assert embedding.sharding.mesh.shape == mesh.shape
  assert len(embedding.sharding.device_set) == 8


def test_a_run_refuses_a_dataset_with_another_vocabulary(pretrained, tiny_data_dir, tmp_path):
  other = str(tmp_path / "records")
  shutil.copytree(tiny_data_dir, other)
  vocab_path = os.path.join(other, "vocab.json")
  vocab = json.load(open(vocab_path))
  json.dump(vocab, open(vocab_path, "w"), indent=3)  # same tokens, other bytes: refused too
  records.write_manifest(other, vocab_size=len(vocab["tokens"]))  # a consistent dataset
  with pytest.raises(ValueError, match="another vocabulary"):
    runs.load_run(pretrained, data_dir=other)
  config = chronic_config.get_config("tiny")
  config.update_from_flattened_dict({"data_dir": other, "init_from": pretrained})
  tr = trainer_lib.Trainer(config, tasks.make_task(config))
  with pytest.raises(ValueError, match="another vocabulary"):
    tr.load_backbone(tr.init_state(0)["params"], pretrained)


def test_another_model_size_is_refused_naming_the_parameter(pretrained, tiny_data_dir, tmp_path):
  shape_error = (r"parameter \S+ has shape \(\d+(, \d+)*\) in the checkpoint but \(\d+(, \d+)*\) "
                 r"in this config \(another model size\); use the model preset")
  # load_run of a tiny run whose config.json was turned into the small preset's.
  edited = str(tmp_path / "edited")
  shutil.copytree(pretrained, edited)
  small = pretrain_config.get_config("small")
  path = os.path.join(edited, runs.CONFIG_FILE)
  config = json.load(open(path))
  config["model"] = json.loads(small.model.to_json_best_effort())
  json.dump(config, open(path, "w"))
  with pytest.raises(ValueError, match=shape_error) as e:
    runs.load_run(edited)
  assert str(e.value).startswith(f"run {edited}: parameter ") and "\n" not in str(e.value)
  # init_from: a small fine-tuning config from the tiny pretraining run (abstract parameters, so
  # nothing of the small model is materialized).
  config = chronic_config.get_config("small")
  config.update_from_flattened_dict({"data_dir": tiny_data_dir, "init_from": pretrained,
                                     "stats_examples": 64})
  tr = trainer_lib.Trainer(config, tasks.make_task(config))
  with pytest.raises(ValueError, match=shape_error) as e:
    tr.load_backbone(tr.abstract_state["params"], pretrained)
  assert str(e.value).startswith(f"config.init_from={pretrained!r}: parameter ")


def test_init_from_a_finetuned_run_takes_its_backbone(tiny_data_dir, finetuned):
  config = chronic_config.get_config("tiny")
  config.update_from_flattened_dict({"data_dir": tiny_data_dir, "init_from": finetuned,
                                     "stats_examples": 64})
  tr = trainer_lib.Trainer(config, tasks.make_task(config))
  params = tr.load_backbone(tr.init_state(0)["params"], finetuned)
  saved, _ = ckpt_lib.load_params(finetuned)
  np.testing.assert_array_equal(np.asarray(params["backbone"]["embedding"]),
                                saved["backbone"]["embedding"])


def test_not_a_run_is_one_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a training run"):
    runs.load_run(str(tmp_path))


def test_tasks_are_registered_by_name():
  assert set(tasks.TASKS) == {"pretrain", "cost", "chronic", "binary"}
  for module in (pretrain_config, cost_config, chronic_config):
    assert module.get_config("tiny").task in tasks.TASKS
  config = pretrain_config.get_config("tiny")
  config.task = "nope"
  with pytest.raises(ValueError, match="expected one of"):
    tasks.make_task(config)


def test_a_new_task_module_registers_itself():
  # A task is one module with @register: no other file names it.
  @registry.register("test_only_task")
  class _Task(tasks.PretrainTask):
    pass

  try:
    config = pretrain_config.get_config("tiny")
    config.task = "test_only_task"
    assert type(tasks.make_task(config, vocab=object.__new__(_FakeVocab))) is _Task
    with pytest.raises(ValueError, match="registered twice"):
      registry.register("test_only_task")(tasks.CostTask)
  finally:
    registry.TASKS.pop("test_only_task")


class _FakeVocab:
  kinds = (0,)
