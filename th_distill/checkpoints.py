"""Persistence of a run directory: Orbax checkpoints, and atomic JSON / array files.

Every write is atomic (a temporary name, then `os.replace`; Orbax finalises a checkpoint by an
atomic rename too), so a run killed at any moment leaves either the old file or the new one, never
a torn one. A stage is finished when its marker JSON exists, which is written last.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


def write_json(path: str, value: Any) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes `arrays` to the .npz file `path` atomically."""
  tmp = f"{path}.tmp{os.getpid()}.npz"
  np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  os.replace(tmp, path)


def load_arrays(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def _abstract(tree: Any) -> Any:
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


def save_params(path: str, params: Any) -> None:
  """Saves a parameter pytree as an Orbax checkpoint at `path` (absolute, must not exist)."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.abspath(path), params, force=True)
  checkpointer.wait_until_finished()


def load_params(path: str, like: Any) -> Any:
  """Restores the pytree saved at `path` with the structure, shapes and shardings of `like`
  (arrays or `jax.ShapeDtypeStruct`s)."""
  return ocp.StandardCheckpointer().restore(os.path.abspath(path), _abstract(like))


class RunCheckpointer:
  """Keeps the latest `max_to_keep` train states of a run in `directory` (Orbax manager).

  Orbax writes a checkpoint under a temporary name and renames it when complete, so a kill leaves
  at worst a temporary folder, which is never listed (`restore_latest` warns about it). If the
  newest listed checkpoint still cannot be read (a damaged disk, a copy cut short), the previous
  one is used, with a warning. Every process of a multi-host run must call `save` (collective).
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.StandardSave(state))
    self._manager.wait_until_finished()

  def restore_latest(self, like: Any) -> Any | None:
    """The newest readable checkpoint, restored with the structure, shapes and shardings of
    `like`; None if there is none."""
    incomplete = [name for name in os.listdir(self.directory) if "tmp" in name]
    if incomplete:
      logging.warning("Ignoring incomplete checkpoint(s) %s in %s (a run was stopped while "
                      "saving).", incomplete, self.directory)
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(_abstract(like)))
      except Exception as e:  # pylint: disable=broad-except  (any damage: try the previous one)
        logging.warning("Checkpoint %d in %s cannot be read (%s: %s); trying the previous one.",
                        step, self.directory, type(e).__name__, e)
        continue
      logging.info("Restored checkpoint of step %d from %s", step, self.directory)
      return restored
    return None

  def close(self) -> None:
    self._manager.close()
