"""The run directory: its layout, and the one way to load a trained run.

    run = load_run(workdir)                  # config, task, model graph, parameters, step
    run = load_run(workdir, mesh=mesh)       # parameters restored straight into mesh shardings
    model = run.model                        # the nnx model holding the parameters

Layout of a training run's WORKDIR (written by `lmm_jax.train.trainer.train_and_evaluate`):
  config.json          the run's full config (ml_collections JSON)
  run.json             what the config alone does not fix: the task, the vocabulary size and
                       digest, the vocabulary padding multiple, the parameter count
  checkpoints/<step>/  orbax checkpoints (lmm_jax.train.checkpoint)
  metrics.jsonl        one JSON object per logged step (lmm_jax.train.metrics)
  predictions/{cost,chronic}/MODEL.parquet   (lmm_jax.eval.predictions)

Loading builds the task from `config.task` (the lmm_jax.tasks registry) and the model from the
task, under `nnx.eval_shape`, so it materializes nothing but the restored parameters and builds no
trainer, optimizer or mesh. A run is refused, in one sentence, when the dataset it is pointed at
has another vocabulary than the one it was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

from flax import nnx
import jax
import ml_collections

from lmm_jax import sharding
from lmm_jax import tasks as tasks_lib
from lmm_jax.data import records
from lmm_jax.model import transformer
from lmm_jax.train import checkpoint as ckpt_lib

CONFIG_FILE = "config.json"
RUN_FILE = "run.json"


def _write_atomic(path: str, text: str) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """WORKDIR/config.json (process 0)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    _write_atomic(os.path.join(workdir, CONFIG_FILE),
                  config.to_json_best_effort(indent=2, sort_keys=True))


# The data layer owns the definition (manifest.json stores the same digest).


def check_vocabulary(workdir: str, data_dir: str, where: str) -> dict[str, Any]:
  """The run's run.json, after checking that data_dir has the vocabulary it was trained on."""
  info = read_run_info(workdir)
  digest = records.vocab_digest(data_dir)
  if info.get("vocab_digest") and digest and digest != info["vocab_digest"]:
    raise ValueError(f"{where} was trained on another vocabulary than {data_dir}'s "
                     f"(vocab.json digest {info['vocab_digest'][:12]} != {digest[:12]}); point "
                     "it at the dataset it was trained on, or retrain")
  return info


def record_run(workdir: str, config: ml_collections.ConfigDict, *, vocab_size: int,
               vocab_multiple: int, num_params: int) -> None:
  """config.json and run.json of a training run (process 0)."""
  write_config(workdir, config)
  if jax.process_index() == 0:
    info = {"task": config.task, "vocab_size": int(vocab_size),
            "vocab_digest": records.vocab_digest(config.data_dir),
            "vocab_multiple": int(vocab_multiple),
            "num_params": int(num_params)}
    _write_atomic(os.path.join(workdir, RUN_FILE), json.dumps(info, indent=2, sort_keys=True))


def check_param_shapes(saved: Any, target: Any, where: str, path: tuple[str, ...] = ()) -> None:
  """Refuses, in one sentence naming the parameter and both shapes, a checkpoint whose parameters
  have other shapes than `target` (another model size than the config asks for). Parameters
  missing from the checkpoint are left to the restore's own error."""
  if hasattr(target, "shape"):
    if hasattr(saved, "shape") and tuple(saved.shape) != tuple(target.shape):
      raise ValueError(f"{where}: parameter {'/'.join(path)} has shape {tuple(saved.shape)} in "
                       f"the checkpoint but {tuple(target.shape)} in this config (another model "
                       "size); use the model preset the run was trained with")
    return
  if not hasattr(target, "items") or not hasattr(saved, "keys"):
    return
  for k, sub in target.items():
    if k in saved.keys():
      check_param_shapes(saved[k], sub, where, path + (str(k),))


def restore_params(workdir: str, target: Any, step: int | None = None, *, hint: str = ""
                   ) -> tuple[Any, int]:
  """(parameters shaped and sharded like `target`, step) from a run's latest (or given)
  checkpoint; saved parameters outside target are not read. Other shapes are refused first
  (`check_param_shapes`)."""
  saved, step = ckpt_lib.read_params_structure(workdir, step, hint=hint)
  check_param_shapes(saved, target, hint or f"run {workdir}")
  return ckpt_lib.restore_latest_params(workdir, target, step, hint=hint)


def read_config(workdir: str, data_dir: str | None = None) -> ml_collections.ConfigDict:
  """A run's config.json (data_dir replaced when given)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} is not a training run: no {CONFIG_FILE} (train it "
                            "with experiments.pretrain or experiments.finetune --workdir=...)")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  if data_dir:
    config.data_dir = data_dir
  return config


def read_run_info(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir!r} has no {RUN_FILE}: it was not written by "
                            "lmm_jax.train.trainer (or training never started)")
  with open(path, encoding="utf-8") as f:
    return json.load(f)


@dataclasses.dataclass
class Run:
  """A trained run, loaded: everything needed to apply its model, nothing to train it."""
  workdir: str
  config: ml_collections.ConfigDict
  task: tasks_lib.Task
  graphdef: Any
  params: Any              # nested dict of arrays (on one device, or sharded over the mesh)
  step: int
  num_params: int

  @property
  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.params)


def load_run(workdir: str, *, data_dir: str | None = None, step: int | None = None,
             mesh: jax.sharding.Mesh | None = None,
             rules: Sequence[tuple[str, Any]] | None = None, hint: str = "",
             **task_kwargs: Any) -> Run:
  """Loads a run's latest (or given) checkpoint; see the module docstring.

  data_dir: the dataset to read (default: the run's own); its vocabulary must be the run's.
  mesh/rules: restore every parameter into its sharding on the mesh (default: the first device).
  task_kwargs: passed to the task's constructor (e.g. a vocabulary already loaded).
  """
  workdir = os.path.abspath(workdir)
  config = read_config(workdir, data_dir)
  where = hint or f"run {workdir}"
  info = check_vocabulary(workdir, config.data_dir, where)
  task = tasks_lib.make_task(config, **task_kwargs)
  abstract = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0), info["vocab_multiple"]))
  graphdef, _ = nnx.split(abstract)
  param_state = nnx.state(abstract, nnx.Param)
  abstract_params = nnx.to_pure_dict(param_state)
  if mesh is not None:
    rules = tuple(tuple(r) for r in (rules if rules is not None else config.logical_rules))
    shardings = sharding.tree_shardings(abstract_params, sharding.logical_axes(param_state),
                                        mesh, rules)
  else:
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: one, abstract_params)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_params, shardings)
  params, step = restore_params(workdir, target, step, hint=where)
  return Run(workdir=workdir, config=config, task=task, graphdef=graphdef, params=params,
             step=int(step), num_params=transformer.count_params(params))


def load_backbone(init_from: str, backbone: Any, *, data_dir: str, nested_key: str | None,
                  hint: str = "") -> Any:
  """The parameters of run `init_from` that fit `backbone` (a tree of sharded arrays or
  ShapeDtypeStructs: their shapes and shardings are kept), for fine-tuning initialization.

  A pretraining run holds the backbone at the top of its parameters; a fine-tuning run under
  `nested_key` (e.g. 'backbone'), beside its head, which is not read.
  """
  where = hint or f"init_from={init_from!r}"
  info = check_vocabulary(init_from, data_dir, where)
  abstract = ckpt_lib.abstract_like(backbone)
  saved, _ = ckpt_lib.read_params_structure(init_from, hint=where)
  saved_keys = set(saved.keys()) if hasattr(saved, "keys") else set()
  nested = nested_key is not None and info.get("task") != "pretrain" and nested_key in saved_keys
  have = set(saved[nested_key].keys()) if nested else saved_keys
  check_param_shapes(saved[nested_key] if nested else saved, abstract, where)
  missing = set(abstract) - have
  if missing:
    raise ValueError(f"{where}: checkpoint params lack {sorted(missing)}; has {sorted(have)} "
                     "(another model size than this config's?)")
  request = {nested_key: abstract} if nested else abstract
  params, _ = restore_params(init_from, request, hint=where)
  return params[nested_key] if nested else params
