"""Parameters a distillation run keeps beside its checkpoints, chosen by its evaluations.

- `best_golden/` (+ `best_golden.json`): the student at the lowest golden metric so far (needs
  the oracle, i.e. the synthetic setup);
- `best_predicted/` (+ `best_predicted.json`): the student at the hacking detector's
  `best_predicted_step` (the start of the slowdown it saw, with the default rule). To have them
  when the detector fires later, the parameters of the evaluations that may still become it
  (`HackingMonitor.candidate_steps()`) are kept in `candidates/<step>/` until then.

These are plain parameter checkpoints (`param_checkpoints.save_params`, collective) kept and pruned
here rather than by an Orbax `CheckpointManager`: its `best_fn` / preservation policies keep
whole steps as `<dir>/<step>/<item>/` (not the single `best_golden/` tree readers load), and
`best_predicted` is a step the detector names only when it fires, from candidates no metric
ranks. They are on disk as soon as written, so pre-emption loses none.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from th_distill import boundary, errors
from th_distill.detection.monitor import HackingMonitor
from th_distill.partitioning import is_main_process
from th_distill.rundir import checkpoints, param_checkpoints


class KeptParameters:
  """Keeps the `keep` subset of `detection.config.KEEP` in the regime directory `directory`."""

  def __init__(self, directory: str, keep: Sequence[str]):
    self.directory, self.keep = directory, tuple(keep)

  def _path(self, name: str) -> str:
    return os.path.join(self.directory, name)

  def _save(self, name: str, step: int, params: Any, **info: Any) -> None:
    param_checkpoints.save_params(self._path(name), params)  # collective on every process
    if is_main_process():
      checkpoints.write_json(self._path(f"{name}.json"), {"step": step, **info})

  def load(self, name: str, like: Any, step: int) -> Any:
    """The parameters kept as `name` (with the structure and shardings of `like`), which must be
    those of `step`; RunError naming the directory if they are not there or are another step's."""
    info = self._path(f"{name}.json")
    kept = checkpoints.read_json(info)["step"] if os.path.exists(info) else None
    if kept != step or not os.path.isdir(self._path(name)):
      raise errors.RunError(
        f"{self._path(name)}: the parameters of step {step} are needed, but "
        + (f"{info} holds step {kept}" if kept is not None else "none are kept there")
        + f"; delete {self.directory} to run the regime again from step 0"
      )
    return param_checkpoints.load_params(self._path(name), like)

  def observe(self, step: int, params: Any, monitor: HackingMonitor, fired_before: bool) -> None:
    """After `monitor` took the evaluation of `step` (`fired_before`: whether it had fired
    before it), keeps what this evaluation makes best."""
    golden = monitor.golden[-1]
    if "best_golden" in self.keep and np.isfinite(golden) and golden <= np.nanmin(monitor.golden):
      self._save("best_golden", step, params, golden=golden)
    if "best_predicted" in self.keep and not fired_before:
      self._track_candidates(step, params, monitor)

  def _track_candidates(self, step: int, params: Any, monitor: HackingMonitor) -> None:
    candidates = self._path("candidates")
    if monitor.fired:
      best = monitor.result.best_predicted_step
      source, kept = os.path.join(candidates, str(best)), self._path("best_predicted")
      # A `kept` folder without its source was moved there before a kill: the resumed run
      # fires again at the same evaluation, with the same best step.
      if os.path.isdir(source) or os.path.isdir(kept):
        if is_main_process():
          if os.path.isdir(source):
            boundary.check(kept)
            shutil.rmtree(kept, ignore_errors=True)
            os.replace(source, kept)
          checkpoints.write_json(
            self._path("best_predicted.json"),
            {"step": best, "detected_step": monitor.result.step},
          )
      else:
        logging.warning("No saved parameters of step %d to keep as best_predicted.", best)
      if is_main_process():
        shutil.rmtree(candidates, ignore_errors=True)
      return
    param_checkpoints.save_params(os.path.join(candidates, str(step)), params)
    if is_main_process():
      keep = {str(s) for s in monitor.candidate_steps()}
      for name in os.listdir(candidates):
        if name not in keep:
          shutil.rmtree(os.path.join(candidates, name), ignore_errors=True)
