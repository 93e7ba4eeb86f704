"""Persistence of a run directory: atomic JSON / array files, and the train state's Orbax
checkpoints (`RunCheckpointer`; parameter checkpoints: `th_distill.rundir.param_checkpoints`).

Every write is atomic (a temporary name, then `os.replace`; Orbax finalises a checkpoint by an
atomic rename too), so a run killed at any moment leaves either the old file or the new one, never
a torn one. A stage is finished when its marker JSON exists, which is written last. JSON files
are strict JSON: a missing or non-finite number is written as `null`, never `NaN`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from th_distill import boundary, errors
from th_distill.errors import RunError

# Orbax's asynchronous saves from several threads' managers at once collide (they time out
# waiting for each other's signals), so while regimes run side by side (`stages.stage2`) every
# Orbax call holds this lock and a save finishes before the next Orbax call starts.
_ORBAX = threading.RLock()
_one_at_a_time = 0  # how many `one_orbax_call_at_a_time` contexts are open


@contextlib.contextmanager
def one_orbax_call_at_a_time() -> Iterator[None]:
  """Within it, Orbax calls of every thread run one at a time and saves synchronously."""
  global _one_at_a_time
  with _ORBAX:
    _one_at_a_time += 1
  try:
    yield
  finally:
    with _ORBAX:
      _one_at_a_time -= 1


def serialised(fn: Callable) -> Callable:
  """`fn` (an Orbax call) under `_ORBAX` while `one_orbax_call_at_a_time` is open."""

  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with _ORBAX if _one_at_a_time else contextlib.nullcontext():
      return fn(*args, **kwargs)

  return wrapped


def json_safe(value: Any) -> Any:
  """`value` with every non-finite float (NaN, inf, numpy scalars included) replaced by None
  and numpy scalars made Python numbers, so that it writes as strict JSON."""
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_json(path: str, value: Any) -> None:
  """Writes `value` to `path` atomically as strict JSON (`json_safe`; `boundary.write_text`)."""
  boundary.write_text(path, json.dumps(json_safe(value), indent=2, sort_keys=True, allow_nan=False))


def read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class DamagedFile(RunError):
  """A file of a run directory is missing or cannot be read and cannot be rebuilt; the message
  names the file, its role and the way forward."""


def describe(error: BaseException) -> str:
  """'<type>: <first line of the message>' of `error`, for one-line messages."""
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


# The JSON files of an Orbax checkpoint folder (its items' too).
_ORBAX_JSON = ("_CHECKPOINT_METADATA", "_METADATA", "_sharding")


def unreadable_json(folder: str) -> str | None:
  """The first of the JSON files Orbax keeps in the checkpoint `folder` (`_ORBAX_JSON`, in it
  and its items) that is not valid UTF-8 JSON, or None."""
  for root, _, names in sorted(os.walk(folder)):
    for name in sorted(set(names) & set(_ORBAX_JSON)):
      try:
        read_json(os.path.join(root, name))
      except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError included
        return os.path.join(root, name)
  return None


def damaged(path: str, role: str, error: BaseException, fix: str) -> DamagedFile:
  """The DamagedFile of `path` (`role`: what it holds) that `error` kept from being read; for a
  checkpoint folder, naming the file in it that cannot be read (`unreadable_json`)."""
  culprit = unreadable_json(path) if os.path.isdir(path) else None
  where = f"{culprit}: " if culprit else ""
  return DamagedFile(f"{path} ({role}) cannot be read ({where}{describe(error)}); {fix}")


def set_aside(path: str, role: str, error: BaseException) -> None:
  """Moves the unreadable file `path` to `<path>.damaged` (process 0; it is written again),
  with a warning naming its role."""
  aside = f"{path}.damaged"
  logging.warning(
    "%s (%s) cannot be read (%s); moved to %s, it is written again.",
    path,
    role,
    describe(error),
    aside,
  )
  if jax.process_index() == 0 and os.path.exists(path):
    os.replace(path, aside)


def _readable(path: str, role: str, read: Callable[[str], Any], valid: Callable[[Any], bool]):
  if not os.path.exists(path):
    return None
  try:
    value = read(path)
    if not valid(value):
      raise ValueError(f"unexpected content ({type(value).__name__})")
    return value
  except Exception as e:  # pylint: disable=broad-except  (any damage: rebuild the file)
    set_aside(path, role, e)
    return None


def readable_json(path: str, role: str) -> dict[str, Any] | None:
  """The JSON object at `path`, or None if it does not exist or cannot be read (a rebuildable
  file: it is then set aside, `set_aside`, and written again by the caller)."""
  return _readable(path, role, read_json, lambda value: isinstance(value, dict))


def readable_arrays(path: str, role: str) -> dict[str, np.ndarray] | None:
  """`load_arrays(path)`, or None if it does not exist or cannot be read (truncated, empty: set
  aside, to be rebuilt by the caller)."""
  return _readable(path, role, load_arrays, lambda value: True)


def save_arrays(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes `arrays` to the .npz file `path` atomically."""
  boundary.write_atomically(
    path,
    lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}),
    binary=True,
    suffix=".npz",
  )


def load_arrays(path: str) -> dict[str, np.ndarray]:
  """The arrays of the .npz file `path`. Prompts written before masks were stored (no
  `prompt_mask` beside `prompts`) were padded with id 0, T5's pad id, which every model used
  then: their mask is read as `prompts != 0`."""
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  if "prompts" in arrays and "prompt_mask" not in arrays:
    arrays["prompt_mask"] = arrays["prompts"] != 0
  return arrays


def abstract_tree(tree: Any) -> Any:
  """The `jax.ShapeDtypeStruct`s (shardings included) of a pytree of arrays or structs: what
  Orbax restores into."""
  return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a checkpoint Orbax has not finalised


class CheckpointLost(RunError):
  """A checkpoint's folder (or its regime's) was deleted while the checkpoint was written."""


def _deleted_while_written(error: BaseException) -> bool:
  """Whether Orbax's `error` says files of a checkpoint being written have vanished (a missing
  file, TensorStore's NOT_FOUND, Orbax's missing array metadata), anywhere in its causes."""
  seen: set[int] = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    text = str(error)
    if isinstance(error, FileNotFoundError) or "NOT_FOUND" in text or "No ArrayMetadata" in text:
      return True
    error = error.__cause__ or error.__context__
  return False


@contextlib.contextmanager
def _lost_checkpoints_named(directory: str, step: int | None) -> Iterator[None]:
  """Turns an Orbax error of a checkpoint whose files were deleted while it was written into a
  one-line CheckpointLost naming `directory` (other errors, a full disk included, go through)."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (Orbax's and TensorStore's own types)
    if errors.space_error(e) is not None or not _deleted_while_written(e):
      raise
    raise CheckpointLost(
      f"{directory} (or the folder it is in) was deleted while checkpoint {step} was being "
      "written; run the same command again: the run resumes from the last checkpoint left "
      "(from the start if none is)"
    ) from e


class CheckpointMismatch(RunError):
  """A checkpoint holds a state of another structure than the run's (its settings changed)."""


def _layout(tree: Any) -> dict[str, tuple[int, ...] | None]:
  """{leaf path: shape} of a pytree of arrays, shape structs or Orbax array metadata."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {
    jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
    if hasattr(leaf, "shape")
    else None
    for path, leaf in leaves
  }


def _structure_change(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
  """How the stored layout differs from the wanted one (the first difference), or None."""
  for path in sorted(stored.keys() | wanted.keys()):
    if path not in wanted:
      return f"{path} is in the checkpoint but not in this run's state"
    if path not in stored:
      return f"{path} is in this run's state but not in the checkpoint"
    if None not in (stored[path], wanted[path]) and stored[path] != wanted[path]:
      return f"{path} has shape {stored[path]} in the checkpoint, {wanted[path]} in this run"
  return None


class RunCheckpointer:
  """Keeps the latest `max_to_keep` train states of a run in `directory` (Orbax manager).

  Saves are asynchronous: `save` returns once the state is copied to host memory (its device
  arrays may then be donated) and Orbax writes it in the background, one save at a time (a save
  first waits for the one before). `wait` blocks until the last save is on disk: call it before
  writing anything that says a checkpoint exists (a stage's marker); `restore_latest`,
  `latest_step` and `close` wait too.

  Orbax writes a checkpoint under a temporary name and renames it when complete, so a kill (during
  an asynchronous save too) leaves at worst a temporary folder, which is never listed and which
  the manager deletes when it is created (`cleanup_tmp_directories`). If the newest listed
  checkpoint still cannot be read (a damaged disk, a copy cut short), it is moved aside to
  `damaged-<step>` (so that step is written afresh) and the previous one is used, with a warning.
  A checkpoint of another structure than the run's state (the optimiser or model settings
  changed) raises `CheckpointMismatch`: it is not damage. Every process of a multi-host run must
  call `save` (collective).
  """

  @serialised
  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    boundary.check(os.path.dirname(self.directory))
    boundary.check(self.directory)  # never a linked checkpoints/ (Orbax would write through it)
    self._saving: int | None = None  # the step of the last save started
    self._manager = ocp.CheckpointManager(
      self.directory,
      item_handlers=ocp.StandardCheckpointHandler(),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
      ),
    )

  @serialised
  def latest_step(self) -> int | None:
    """The newest checkpoint's step, once it is on disk (waits for a save under way)."""
    self.wait()
    return self._manager.latest_step()

  @serialised
  def save(self, step: int, state: Any) -> None:
    """Starts saving `state` as checkpoint `step` (a step already saved or being saved is left
    as it is); see the class doc."""
    if step in self._manager.all_steps():  # the step being saved included
      return
    with _lost_checkpoints_named(self.directory, self._saving):  # a failed earlier save raises
      self._manager.save(step, args=ocp.args.StandardSave(state))
    self._saving = step
    if _one_at_a_time:
      self.wait()

  @serialised
  def wait(self) -> None:
    """Blocks until the last save is on disk (raises its error if it failed)."""
    with _lost_checkpoints_named(self.directory, self._saving):
      self._manager.wait_until_finished()

  @serialised
  def restore_latest(self, like: Any) -> Any | None:
    """The newest readable checkpoint, restored with the structure, shapes and shardings of
    `like`; None if there is none."""
    self.wait()
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        change = _structure_change(_layout(self._manager.item_metadata(step).tree), _layout(like))
        if change is None:
          restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_tree(like)))
      except Exception as e:  # pylint: disable=broad-except  (any damage: try the previous one)
        culprit = unreadable_json(os.path.join(self.directory, str(step)))
        self._set_aside(step, (f"{culprit}: " if culprit else "") + describe(e))
        continue
      if change is not None:
        raise CheckpointMismatch(
          f"checkpoint {step} in {self.directory} holds a state of another structure ({change}):"
          " the optimiser or model settings changed since it was written (e.g. "
          "student.grad_clip, student.weight_decay, student.model); rerun with the settings "
          "it was written with, or use a new --workdir"
        )
      logging.info("Restored checkpoint of step %d from %s", step, self.directory)
      return restored
    return None

  @serialised
  def _set_aside(self, step: int, reason: str) -> None:
    """Moves the unreadable checkpoint of `step` to `damaged-<step>` (a later save writes the
    step afresh), with a warning."""
    aside = os.path.join(self.directory, f"damaged-{step}")
    logging.warning(
      "Checkpoint %d in %s cannot be read (%s); moved to %s, trying the previous one.",
      step,
      self.directory,
      reason,
      aside,
    )
    if jax.process_index() == 0:
      shutil.rmtree(aside, ignore_errors=True)
      os.replace(os.path.join(self.directory, str(step)), aside)
    self._manager.reload()

  @serialised
  def close(self) -> None:
    """Waits for the last save, then closes the manager."""
    self._manager.close()

  def last_complete_step(self) -> int | None:
    """The newest checkpoint on disk (finalised: Orbax renames a complete one to its step),
    without waiting for a save under way; None if there is none."""
    steps = [int(n) for n in os.listdir(self.directory) if n.isdigit()]
    return max(steps) if steps else None

  def unfinished_step(self) -> int | None:
    """The step of the last save started, if it is not on disk (still under way, or failed)."""
    if self._saving is None or self._saving == self.last_complete_step():
      return None
    return self._saving

  @serialised
  def discard_unfinished(self) -> None:
    """After a failed save: waits for the writer to stop and removes the checkpoints it left
    unfinished (Orbax's temporary folders), so they hold no disk space."""
    try:
      self._manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except  (the failure being handled)
      pass
    if jax.process_index() == 0:
      for name in os.listdir(self.directory):
        if not name.isdigit() and TMP_MARK in name:
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
