"""AdamW with warmup + cosine decay, global-norm clipping, a weight-decay mask and per-subtree
('backbone' / 'head') learning-rate multipliers or freezing; and the optimizer state's shardings."""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

from absl import logging
import jax
from jax.sharding import Sharding
import ml_collections
import optax


_POSITIVE = lambda v: v > 0
_NON_NEGATIVE = lambda v: v >= 0
# config.optimizer field -> (test, what it must be); checked before any optimizer is built.
_RULES: dict[str, tuple[Callable[[float], bool], str]] = {
    "learning_rate": (_POSITIVE, "a finite number > 0"),
    "warmup_steps": (lambda v: v >= 0 and float(v).is_integer(), "an integer >= 0"),
    "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "b1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "b2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "eps": (_POSITIVE, "a finite number > 0"),
    "weight_decay": (_NON_NEGATIVE, "a finite number >= 0"),
    "grad_clip": (_NON_NEGATIVE, "a finite number >= 0 (0 disables clipping)"),
    "grad_accum_steps": (lambda v: v >= 1 and float(v).is_integer(), "an integer >= 1"),
    "backbone_lr_multiplier": (_NON_NEGATIVE, "a finite number >= 0"),
}


def validate(opt: ml_collections.ConfigDict, num_train_steps: int) -> None:
  """Raises a one-line ValueError naming the first absurd optimizer setting."""
  for key, (ok, want) in _RULES.items():
    if key not in opt:
      continue
    v = opt[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
      raise ValueError(f"config.optimizer.{key}={v!r}: must be {want}")
  if not isinstance(num_train_steps, int) or num_train_steps < 0:
    raise ValueError(f"config.num_train_steps={num_train_steps!r}: must be an integer >= 0")
  if opt.warmup_steps >= num_train_steps > 0:
    # Kept for smoke runs shorter than a preset's warmup; the peak is reached at the last step.
    logging.warning("optimizer.warmup_steps=%d >= num_train_steps=%d: warmup cut to %d steps",
                    opt.warmup_steps, num_train_steps, max(num_train_steps - 1, 0))


def make_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then cosine decay to learning_rate * min_lr_ratio."""
  warmup = min(opt.warmup_steps, max(num_train_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate, warmup_steps=warmup,
      decay_steps=max(num_train_steps, warmup + 1),
      end_value=opt.learning_rate * opt.min_lr_ratio)


def path_str(path: jax.tree_util.KeyPath) -> str:
  """'layer_0/mlp/gate' for a jax tree path (what config.optimizer.no_decay_patterns match)."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


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
  validate(opt, num_train_steps)
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


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state: Any,
                        param_shardings: Any, replicated: Sharding) -> Any:
  """Shardings for tx's state: every params-shaped subtree (Adam moments) takes the parameters'
  shardings, leaf by leaf; everything else (step counts) is `replicated`.

  optax finds the params-shaped subtrees by initializing tx on a placeholder; the masked
  transforms of multi_transform leave MaskedNodes where a label's parameters are not theirs, kept
  as they are so the result has the state's tree structure.
  """
  def param_leaf(state_leaf: Any, param_sharding: Sharding) -> Any:
    return state_leaf if isinstance(state_leaf, optax.MaskedNode) else param_sharding

  return optax.tree_map_params(tx, param_leaf, abstract_opt_state, param_shardings,
                               transform_non_params=lambda _: replicated,
                               is_leaf=lambda x: isinstance(x, optax.MaskedNode))
