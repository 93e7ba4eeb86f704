"""Files in a multi-process run: process 0 writes, every process sees the same answer."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from th_distill.partitioning import is_main_process


def write_on_main(write: Callable[[], None]) -> None:
  """Runs `write` on process 0 only, then waits until every process gets there (so nobody reads
  a file before it exists)."""
  if is_main_process():
    write()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("th_distill_write")


def agreed(value: bool) -> bool:
  """Process 0's `value` on every process, so all take the same branch (and enter the same
  collectives)."""
  if jax.process_count() > 1:
    value = bool(multihost_utils.broadcast_one_to_all(np.asarray(value)))
  return value


def exists_on_main(path: str) -> bool:
  """Whether `path` exists as process 0 sees it (`agreed`), even while process 0 is writing it."""
  return agreed(os.path.exists(path))
