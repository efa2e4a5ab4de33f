"""The declaration of one record field: what it holds, how it is stored and how it is batched.

`records.py` declares the timeline fields and the task record's metadata with it, `labels.py` the
per-example fields of a task record (covariates at the index date and targets); the builder writes
records through `records.make_record`, which casts every value to its declared dtype, and the input
pipeline batches every field that declares a `batch_dtype`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Optional

import numpy as np

STRINGS = "str"   # dtype of a list of strings (e.g. dx_prior); never batched


class FieldKind(enum.Enum):
  SEQUENCE = "sequence"    # one value per token: tokens, days, age
  META = "meta"            # identifies or frames the record: subject_id, prefix_len, index_day
  COVARIATE = "covariate"  # per example, known at the index date: sex, cost_prior, cond_prior, ...
  TARGET = "target"        # per example, observed in the target year: cost_next, cond_next, ...


@dataclasses.dataclass(frozen=True)
class Field:
  """One field of a record.

  shape: () a scalar, (n,) a fixed-length vector, (None,) variable length (per token for
  SEQUENCE fields). batch_dtype: the dtype in the pipeline's batches (None: not batched);
  batch_pad: its value on evaluation padding rows; batch_offset: a SEQUENCE batched relative to
  the segment's first value (days).
  """
  name: str
  kind: FieldKind
  dtype: str
  shape: tuple[Optional[int], ...] = ()
  doc: str = ""
  batch_dtype: Optional[str] = None
  batch_pad: float = 0
  batch_offset: bool = False

  def __post_init__(self):
    if self.batch_dtype is not None and (self.dtype == STRINGS or (
        self.kind != FieldKind.SEQUENCE and None in self.shape)):
      raise ValueError(f"field {self.name!r}: only fixed-shape numeric fields can be batched")

  def encode(self, value: Any) -> Any:
    """The value as the record stores it (declared dtype); ValueError naming the field if the
    shape is wrong."""
    if self.dtype == STRINGS:
      return list(value)
    if not self.shape:
      if np.ndim(value) != 0:
        raise ValueError(f"field {self.name!r} is a scalar, got shape {np.shape(value)}")
      return np.dtype(self.dtype).type(value)
    arr = np.asarray(value, self.dtype)
    if arr.ndim != len(self.shape) or any(d is not None and d != n
                                          for d, n in zip(self.shape, arr.shape)):
      raise ValueError(f"field {self.name!r} has shape {arr.shape}, expected "
                       f"{tuple('n' if d is None else d for d in self.shape)}")
    return arr

  def batch_value(self, value: Any) -> Any:
    """A stored (per-example) value as one row of a batch: batch_dtype, the declared shape."""
    if not self.shape:
      return np.dtype(self.batch_dtype).type(value)
    return np.asarray(value, self.batch_dtype).reshape(self.shape)

  def batch_padding(self) -> Any:
    """The row of an evaluation padding example."""
    if not self.shape:
      return np.dtype(self.batch_dtype).type(self.batch_pad)
    return np.full(self.shape, self.batch_pad, self.batch_dtype)
