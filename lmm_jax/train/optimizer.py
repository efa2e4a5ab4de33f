"""AdamW with warmup + cosine decay, global-norm clipping, a weight-decay mask and per-subtree
('backbone' / 'head') learning-rate multipliers or freezing."""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import ml_collections
import optax

from lmm_jax import sharding


def make_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then cosine decay to learning_rate * min_lr_ratio."""
  warmup = min(opt.warmup_steps, max(num_train_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate, warmup_steps=warmup,
      decay_steps=max(num_train_steps, warmup + 1),
      end_value=opt.learning_rate * opt.min_lr_ratio)


def path_str(path) -> str:
  return "/".join(sharding.path_keys(path))


def decay_mask_fn(no_decay_patterns: Sequence[str]):
  """Weight decay on matrices only: not on vectors (norm scales, biases) nor matching paths."""
  patterns = [re.compile(p) for p in no_decay_patterns]

  def mask(params: Any) -> Any:
    def decide(path, x):
      if x.ndim < 2:
        return False
      name = path_str(path)
      return not any(p.search(name) for p in patterns)
    return jax.tree_util.tree_map_with_path(decide, params)

  return mask


def make_optimizer(opt: ml_collections.ConfigDict, num_train_steps: int,
                   labels: Any) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer and its schedule; `labels` is a params-shaped tree of 'backbone'/'head'."""
  schedule = make_schedule(opt, num_train_steps)

  def adamw(scale: float) -> optax.GradientTransformation:
    lr = schedule if scale == 1.0 else (lambda step: schedule(step) * scale)
    return optax.adamw(lr, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay,
                       mask=decay_mask_fn(tuple(opt.no_decay_patterns)))

  if opt.freeze_backbone:
    backbone = optax.set_to_zero()
  else:
    backbone = adamw(opt.backbone_lr_multiplier)
  chain = []
  if opt.freeze_backbone:
    # Zero the frozen gradients before clipping so they do not shrink the heads' updates.
    chain.append(optax.multi_transform(
        {"backbone": optax.set_to_zero(), "head": optax.identity()}, labels))
  if opt.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(opt.grad_clip))
  chain.append(optax.multi_transform({"backbone": backbone, "head": adamw(1.0)}, labels))
  return optax.chain(*chain), schedule
