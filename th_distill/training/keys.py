"""The run's random streams: one key per purpose, `fold_in(PRNGKey(seed), purpose)`.

Every stage draws from its own stream (and folds in the step where it draws per step), so a run is
reproducible, a resumed run sees the batches and samples an uninterrupted one would, and adding a
use of randomness never shifts another's numbers.
"""

from __future__ import annotations

import enum

import jax


class Purpose(enum.IntEnum):
  """The purpose ids folded into the seed key (fixed: changing one changes every result)."""

  ORACLE_INIT = 1
  ORACLE_CALIBRATE = 2
  ORACLE_DATA = 3
  TEACHER_INIT = 4
  TEACHER_TRAIN = 5
  STUDENT_INIT = 6
  STUDENT_SFT = 7
  EVAL_SETS = 8
  OFFLINE_DATA = 9
  ONLINE = 10
  TRAIN_DROPOUT = 11
  EVAL_STUDENT = 12
  TRAIN_PROMPT_SET = 13
  REPORT_SAMPLES = 14


def key(seed: int, purpose: Purpose) -> jax.Array:
  """The key [2] uint32 of `purpose`'s stream for `seed`."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), int(purpose))
