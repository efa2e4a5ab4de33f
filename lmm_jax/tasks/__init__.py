"""Training tasks (`lmm_jax.train.task.Task` implementations), registered by name.

`config.task` names the task of a run; `make_task(config)` builds it. A new prediction target is
one module here (its Task subclass), one entry in TASKS, and its config in experiments/configs/.

  pretrain   next-token prediction over packed timelines          tasks/pretrain.py
  cost       next-year allowed cost (Tweedie / Poisson / Huber)    tasks/cost.py
  chronic    next-year chronic conditions, multi-label             tasks/chronic.py
"""

from __future__ import annotations

from typing import Any

import ml_collections

from lmm_jax.tasks.chronic import ChronicTask
from lmm_jax.tasks.cost import CostTask
from lmm_jax.tasks.finetune import FinetuneTask
from lmm_jax.tasks.pretrain import PretrainTask
from lmm_jax.train.task import Task

TASKS: dict[str, type[Task]] = {
    "pretrain": PretrainTask,
    "cost": CostTask,
    "chronic": ChronicTask,
}


def make_task(config: ml_collections.ConfigDict, **kwargs: Any) -> Task:
  """The task named by config.task, built from the config (kwargs: e.g. a loaded vocab)."""
  name = config.get("task") or ""
  if name not in TASKS:
    raise ValueError(f"config.task={name!r}: expected one of {sorted(TASKS)}")
  return TASKS[name](config, **kwargs)


__all__ = ["TASKS", "make_task", "ChronicTask", "CostTask", "FinetuneTask", "PretrainTask",
           "Task"]
