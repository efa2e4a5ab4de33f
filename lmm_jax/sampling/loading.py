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
from flax import traverse_util
import jax
import orbax.checkpoint as ocp

from lmm_jax import sharding
from lmm_jax.model import transformer
from lmm_jax.train import checkpoint as ckpt_lib

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


def _params_metadata(ckpt_dir: str, step: int) -> Any:
  """The saved parameter tree's metadata (shapes), read without restoring arrays."""
  meta = ocp.StandardCheckpointer().metadata(os.path.join(ckpt_dir, str(step), "params"))
  tree = getattr(meta, "item_metadata", meta)
  if tree is None or "embedding" not in tree:
    raise ValueError(f"{ckpt_dir}/{step}/params: no 'embedding' parameter in the checkpoint")
  return tree


def logical_axes(abstract_model: nnx.Module) -> dict[str, Any]:
  flat = {}
  for path, var in nnx.to_flat_state(nnx.state(abstract_model, nnx.Param)):
    names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
    flat[tuple(map(str, path))] = tuple(names)
  return traverse_util.unflatten_dict(flat)


def load_pretrained(workdir: str, vocab_size: int, mesh: jax.sharding.Mesh,
                    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES
                    ) -> tuple[transformer.Transformer, int, dict[str, Any]]:
  """(model with restored parameters, parameter count, the training config dict)."""
  train_cfg = read_train_config(workdir)
  src = ckpt_lib.Checkpointer(ckpt_lib.checkpoint_dir(workdir), read_only=True)
  try:
    step = src.latest_step()
    if step is None:
      raise FileNotFoundError(f"init_from={workdir!r} holds no checkpoint")
    padded = _shape(_params_metadata(src.directory, step)["embedding"])[0]
    if padded < vocab_size:
      raise ValueError(f"checkpoint embedding has {padded} rows < vocabulary size {vocab_size}: "
                       "data_dir is not the dataset the model was trained on")
    cfg = transformer.TransformerConfig(vocab_size=vocab_size, padded_vocab_size=padded,
                                        **train_cfg["model"])
    abstract = nnx.eval_shape(lambda: transformer.Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    abstract_params = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
    shardings = sharding.tree_shardings(abstract_params, logical_axes(abstract), mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract_params, shardings)
    params = src.restore_params(step, target)
  finally:
    src.close()
  nnx.replace_by_pure_dict(abstract_state, params)
  model = nnx.merge(graphdef, abstract_state)
  return model, transformer.count_params(model), dict(train_cfg, restored_step=int(step))

