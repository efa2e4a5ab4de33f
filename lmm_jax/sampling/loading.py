"""Restores a pretrained transformer for sampling from a pretraining workdir.

The workdir holds `config.json` (the training config, written by the trainer) and orbax
checkpoints (`checkpoints/<step>/params`). The model config comes from config.json's `model`
block, the vocabulary size from the dataset's vocab.json and the padded vocabulary size from the
checkpoint's embedding shape; parameters are restored straight into their mesh shardings.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from flax import nnx
import jax

from lmm_jax import sharding
from lmm_jax.model import transformer
from lmm_jax.train import checkpoint as ckpt_lib
from lmm_jax.train import trainer as trainer_lib

CONFIG_FILE = "config.json"


def read_train_config(workdir: str) -> dict[str, Any]:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"init_from={workdir!r}: no {CONFIG_FILE}; is it a pretraining workdir "
                            "(python -m experiments.pretrain --workdir=...)?")
  with open(path) as f:
    return json.load(f)


def _shape(meta: Any) -> tuple[int, ...]:
  shape = getattr(meta, "shape", None)
  if shape is None and isinstance(meta, dict):
    shape = meta.get("shape")
  if shape is None:
    raise ValueError(f"cannot read a shape from checkpoint metadata {meta!r}")
  return tuple(int(s) for s in shape)


def load_pretrained(workdir: str, vocab_size: int, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES
                    ) -> tuple[transformer.Transformer, int, dict[str, Any]]:
  """(model with restored parameters, parameter count, the training config dict)."""
  train_cfg = read_train_config(workdir)
  where = f"init_from={workdir!r}"
  saved, step = ckpt_lib.read_params_structure(workdir, hint=where)
  if "embedding" not in saved:
    raise ValueError(f"{where}: no 'embedding' parameter in the checkpoint of step {step}")
  padded = _shape(saved["embedding"])[0]
  if padded < vocab_size:
    raise ValueError(f"checkpoint embedding has {padded} rows < vocabulary size {vocab_size}: "
                     "data_dir is not the dataset the model was trained on")
  cfg = transformer.TransformerConfig(vocab_size=vocab_size, padded_vocab_size=padded,
                                      **train_cfg["model"])
  abstract = nnx.eval_shape(lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  param_state = nnx.state(abstract, nnx.Param)
  abstract_params = nnx.to_pure_dict(param_state)
  shardings = sharding.tree_shardings(abstract_params, trainer_lib.logical_axes(param_state),
                                      mesh, rules)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_params, shardings)
  params, _ = ckpt_lib.restore_latest_params(workdir, target, step, hint=where)
  nnx.replace_by_pure_dict(abstract_state, params)
  model = nnx.merge(graphdef, abstract_state)
  return model, transformer.count_params(model), dict(train_cfg, restored_step=int(step))

