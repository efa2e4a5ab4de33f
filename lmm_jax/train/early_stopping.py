"""Early stopping on the tuning split: patience counted in evaluations, a minimum improvement.

    es = EarlyStopping.from_config(config)         # None when config.early_stopping.patience == 0
    es.resume(checkpointer, start_step, eval_steps) # a restarted run continues the count
    improved = es.update(step, metrics)             # after each evaluation
    if es.stopped: ...                              # `patience` evaluations without improvement

The trainer saves a checkpoint with {metric: value} at every evaluation; the Checkpointer keeps
the best of them beside the latest (orbax BestN), and prediction restores that best one. The state
needs no file of its own: on resume the best step and value come from the checkpoints' metrics and
the evaluations since the best are the evaluation steps between it and the resumed step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping

import ml_collections

MODES = ("min", "max")


@dataclasses.dataclass
class EarlyStopping:
  """Stops after `patience` evaluations in a row improve `metric` by no more than min_delta."""

  metric: str = "eval_loss"
  mode: str = "min"
  patience: int = 2
  min_delta: float = 0.0
  best_value: float = math.nan
  best_step: int = -1
  bad_evals: int = 0

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"early_stopping.mode={self.mode!r}: expected one of {MODES}")
    if self.patience <= 0:
      raise ValueError(f"early_stopping.patience={self.patience} must be positive")
    if self.min_delta < 0:
      raise ValueError(f"early_stopping.min_delta={self.min_delta} must be >= 0")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "EarlyStopping | None":
    es = config.get("early_stopping")
    if es is None or int(es.patience) <= 0:
      return None
    if not config.eval_every_steps:
      raise ValueError(f"early_stopping.patience={es.patience} needs evaluations: set "
                       "eval_every_steps > 0")
    return cls(metric=es.metric, mode=es.mode, patience=int(es.patience),
               min_delta=float(es.min_delta))

  @property
  def stopped(self) -> bool:
    return self.bad_evals >= self.patience

  def _better(self, value: float) -> bool:
    if math.isnan(self.best_value):
      return True
    if self.mode == "min":
      return value < self.best_value - self.min_delta
    return value > self.best_value + self.min_delta

  def update(self, step: int, metrics: Mapping[str, Any]) -> bool:
    """Counts one evaluation; True when it is the new best."""
    if self.metric not in metrics:
      raise KeyError(f"early_stopping.metric={self.metric!r} is not among the evaluation's "
                     f"metrics {sorted(metrics)}")
    value = float(metrics[self.metric])
    if not math.isfinite(value):
      raise FloatingPointError(f"early stopping: {self.metric} is {value} at step {step}")
    if self._better(value):
      self.best_value, self.best_step, self.bad_evals = value, step, 0
      return True
    self.bad_evals += 1
    return False

  def resume(self, best_step: int | None, best_metrics: Mapping[str, Any] | None,
             eval_steps: Iterable[int], start_step: int) -> None:
    """The state at start_step: the best checkpoint's step and metrics, and the evaluations
    (eval_steps, all the run's evaluation steps) after it up to start_step."""
    if best_step is None or best_metrics is None or self.metric not in best_metrics:
      return
    self.best_step, self.best_value = int(best_step), float(best_metrics[self.metric])
    self.bad_evals = sum(1 for s in eval_steps if best_step < s <= start_step)

  def summary(self) -> str:
    return (f"{self.metric} best {self.best_value:.6g} at step {self.best_step}; "
            f"{self.bad_evals} evaluation(s) since without an improvement > {self.min_delta:g} "
            f"(patience {self.patience})")


def eval_steps(num_steps: int, eval_every_steps: int) -> list[int]:
  """The steps the trainer evaluates at with early stopping: every eval_every_steps and the end."""
  steps = list(range(eval_every_steps, num_steps, eval_every_steps)) if eval_every_steps else []
  return steps + [num_steps]
