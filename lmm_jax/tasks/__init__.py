"""Training tasks (`lmm_jax.train.task.Task` implementations), registered by name.

`config.task` names the task of a run; `make_task(config)` builds it. A task module registers its
class with `@registry.register("name")`, and every module of this package is imported here, so a
new prediction target is one module in this folder (plus its labels and its config):

  pretrain   next-token prediction over packed timelines          tasks/pretrain.py
  cost       next-year allowed cost (Tweedie / Poisson / Huber)    tasks/cost.py
  chronic    next-year chronic conditions, multi-label             tasks/chronic.py
  binary     a MEDS label's boolean_value (e.g. MEDS-DEV tasks)    tasks/binary.py

Shared by the fine-tuning tasks: tasks/finetune.py (backbone + head over TASK records) and
tasks/losses.py.
"""

from __future__ import annotations

import importlib
import pkgutil

from lmm_jax.tasks.chronic import ChronicTask
from lmm_jax.tasks.cost import CostTask
from lmm_jax.tasks.finetune import FinetuneTask
from lmm_jax.tasks.pretrain import PretrainTask
from lmm_jax.tasks.registry import TASKS, make_task, register
from lmm_jax.train.task import Task

# Modules not named above (a new task) register themselves on import.
for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TASKS", "make_task", "register", "ChronicTask", "CostTask", "FinetuneTask",
           "PretrainTask", "Task"]
