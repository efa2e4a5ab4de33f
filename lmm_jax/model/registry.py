"""Backbone variants by name: config.model.name -> (config dataclass, module class).

    cfg = registry.make_config(config.model, vocab_size, padded_vocab_size)
    model = registry.build(cfg, nnx.Rngs(params=key))

A new variant is one file (a frozen config dataclass with vocab_size and padded_vocab_size
fields, and an nnx.Module implementing `lmm_jax.model.backbone.Backbone`) plus one entry in
`MODELS`; pretraining, fine-tuning (`FinetuneModel`) and sampling then work with it unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from flax import nnx

from lmm_jax.model import transformer

DEFAULT_MODEL = "transformer"


@dataclasses.dataclass(frozen=True)
class Entry:
  config_cls: type
  module_cls: Callable[..., nnx.Module]   # module_cls(config, rngs=rngs)


MODELS: dict[str, Entry] = {
    "transformer": Entry(transformer.TransformerConfig, transformer.Transformer),
}


def register(name: str, config_cls: type, module_cls: Callable[..., nnx.Module]) -> None:
  """Adds a variant at run time (tests, plugins); built-in ones are entries of MODELS."""
  if name in MODELS:
    raise ValueError(f"model name {name!r} is already registered")
  if not dataclasses.is_dataclass(config_cls):
    raise ValueError(f"model {name!r}: config class {config_cls.__name__} is not a dataclass")
  MODELS[name] = Entry(config_cls, module_cls)


def get(name: str) -> Entry:
  if name not in MODELS:
    raise ValueError(f"unknown model name {name!r}: expected one of {sorted(MODELS)}")
  return MODELS[name]


def name_of(config: Any) -> str:
  """The registered name whose config class is type(config)."""
  for name, entry in MODELS.items():
    if type(config) is entry.config_cls:  # pylint: disable=unidiomatic-typecheck
      return name
  raise ValueError(f"no registered model takes a {type(config).__name__}: registered config "
                   f"classes are {[e.config_cls.__name__ for e in MODELS.values()]}")


def make_config(model_cfg: Mapping[str, Any], vocab_size: int, padded_vocab_size: int) -> Any:
  """The static config of model_cfg.get('name', 'transformer') from the fields it has.

  Entries the dataclass lacks (the name, a fine-tuning head's, another variant's) are left out,
  so one config.model can carry them.
  """
  entry = get(model_cfg.get("name", DEFAULT_MODEL))
  items = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
  fields = {f.name for f in dataclasses.fields(entry.config_cls)}
  kwargs = {k: v for k, v in items.items()
            if k in fields and k not in ("vocab_size", "padded_vocab_size")}
  return entry.config_cls(vocab_size=vocab_size, padded_vocab_size=padded_vocab_size, **kwargs)


def build(config: Any, rngs: nnx.Rngs) -> nnx.Module:
  """The backbone module of config's registered variant."""
  return MODELS[name_of(config)].module_cls(config, rngs=rngs)


__all__ = ["DEFAULT_MODEL", "Entry", "MODELS", "build", "get", "make_config", "name_of",
           "register"]
