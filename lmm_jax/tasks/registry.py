"""The task registry: `config.task` names a Task class registered with `@register(name)`."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import ml_collections

from lmm_jax.train.task import Task

TASKS: dict[str, type[Task]] = {}
T = TypeVar("T", bound=type[Task])


def register(name: str) -> Callable[[T], T]:
  """Class decorator: makes a Task subclass available as config.task == name."""
  def add(cls: T) -> T:
    if name in TASKS and TASKS[name] is not cls:
      raise ValueError(f"task {name!r} is registered twice ({TASKS[name].__name__}, "
                       f"{cls.__name__})")
    TASKS[name] = cls
    return cls
  return add


def make_task(config: ml_collections.ConfigDict, **kwargs: Any) -> Task:
  """The task named by config.task, built from the config (kwargs: e.g. a loaded vocab)."""
  name = config.get("task") or ""
  if name not in TASKS:
    raise ValueError(f"config.task={name!r}: expected one of {sorted(TASKS)}")
  return TASKS[name](config, **kwargs)
