"""What `th_distill.training.distiller.Distiller.train` reads: its `data` in any of the forms it
accepts (a sequence or iterable of batches, a function of the step and the student's parameters,
a batch source) as a `DataSource`, each batch checked and cast by `as_batch`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from th_distill.data.batch import BATCH_ARRAYS, Batch

# The dtypes of a batch's arrays, in `BATCH_ARRAYS` order.
BATCH_DTYPES = (np.int32, np.bool_, np.int32, np.float32)


def as_batch(item: Any) -> Batch:
  """`item` as a `Batch`: a Batch as it is, a mapping of `BATCH_ARRAYS` as host arrays of the
  library's dtypes (`BATCH_DTYPES`); its shapes checked ([B, Li] twice, [B, Lt] twice)."""
  if isinstance(item, Mapping):
    missing = [name for name in BATCH_ARRAYS if name not in item]
    if missing:
      raise ValueError(
        f"A batch lacks {', '.join(missing)}: it needs {', '.join(BATCH_ARRAYS)} "
        "([B, Li] int32, [B, Li] bool, [B, Lt] int32, [B, Lt] float32)."
      )
    item = Batch(*(np.asarray(item[k]).astype(d) for k, d in zip(BATCH_ARRAYS, BATCH_DTYPES)))
  if not isinstance(item, Batch):
    raise TypeError(
      f"A batch must be a th_distill.data.batch.Batch or a mapping of {', '.join(BATCH_ARRAYS)},"
      f" got {type(item).__name__}."
    )
  shapes = {name: np.shape(getattr(item, name)) for name in BATCH_ARRAYS}
  rows = shapes["prompts"][:1]
  for name, like in (("prompt_mask", "prompts"), ("mask", "responses")):
    if len(shapes[like]) != 2 or shapes[name] != shapes[like] or shapes[like][:1] != rows:
      raise ValueError(
        f"A batch's {like} and {name} must both be [B, L] with the prompts' B rows; got "
        + ", ".join(f"{n} {s}" for n, s in shapes.items())
        + "."
      )
  return item


@dataclasses.dataclass
class DataSource:
  """What the training loop reads of `train`'s data: `batch_at(step, student_params) ->
  Batch`, `needs_params_at(step)` (whether step's batch depends on the student's parameters of
  that step) and what a checkpoint carries for it (`carried`: a `trainer.CarriedState` or
  None)."""

  batch_at: Callable[[int, Any], Batch]
  needs_params_at: Callable[[int], bool] | None = None
  carried: Any = None


class _InOrder:
  """Batches of an iterable, one per step in order; a resumed run skips the steps done."""

  def __init__(self, batches: Iterable[Any]):
    self.batches: Iterator[Any] = iter(batches)
    self.next_step = 0

  def batch_at(self, step: int, student_params: Any) -> Batch:
    del student_params
    if step < self.next_step:
      raise ValueError(f"batch of step {step} asked after step {self.next_step - 1}'s.")
    try:
      for _ in range(step - self.next_step + 1):
        item = next(self.batches)
    except StopIteration:
      raise ValueError(
        f"The batches ran out at step {step}: give at least as many batches as steps, a list "
        "(read in epochs) or fewer steps."
      ) from None
    self.next_step = step + 1
    return as_batch(item)


def data_source(data: Any) -> DataSource:
  """`train`'s `data` as a `DataSource` (the module docstring lists the forms)."""
  if hasattr(data, "batch_at"):  # a batch source of the data regimes, or its like
    carried = data if hasattr(data, "state") and hasattr(data, "load_state") else None
    return DataSource(data.batch_at, getattr(data, "needs_params_at", None), carried)
  if callable(data):
    return DataSource(lambda step, params: as_batch(data(step, params)))
  if isinstance(data, (Batch, Mapping)) or not isinstance(data, Iterable):
    raise TypeError(
      "data: give a list or iterable of batches, a function (step, student_params) -> batch, "
      f"or a BatchSource; got {type(data).__name__} (one batch: pass [batch])."
    )
  if isinstance(data, Sequence):
    if not data:
      raise ValueError("data: the list of batches is empty.")
    return DataSource(lambda step, params: as_batch(data[step % len(data)]), lambda step: False)
  return DataSource(_InOrder(data).batch_at, lambda step: False)
