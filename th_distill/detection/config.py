"""The `detection` config section: the detector's settings and what the training callback does.

`config.validate` checks a section with `problems`; the reports read its settings with
`detector_settings`; `monitor.HackingMonitor` checks its `on_detect` / `keep` with
`callback_problems` (the same check).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import ml_collections

from th_distill import detection
from th_distill.observing.metric_names import PROXY, TRAIN_PROXY, is_curve_name

# Checkpoints the callback may keep in the run directory, and what it may do when it fires.
KEEP = ("best_golden", "best_predicted")
ON_DETECT = ("continue", "stop", "refresh")

# The detector's settings a `detection` config section may hold (base_config() holds the main
# ones; `window` may be added).
SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(detection.DetectorSettings))


def detector_settings(
  section: ml_collections.ConfigDict, check: bool = True
) -> detection.DetectorSettings:
  """The `detection` config section's detector fields (defaults for those it lacks); ValueError
  if any is invalid, unless `check` is False."""
  return detection.DetectorSettings(
    **{name: section[name] for name in SETTINGS_FIELDS if name in section}, check=check
  )


def callback_problems(on_detect: str, keep: Sequence[str]) -> list[str]:
  """What is wrong with the callback's fields, as 'detection.<field>: <problem>' lines."""
  problems = []
  if on_detect not in ON_DETECT:
    problems.append(f"detection.on_detect: must be one of {ON_DETECT}, got {on_detect!r}")
  if not set(keep) <= set(KEEP):
    problems.append(f"detection.keep: must be a subset of {KEEP}, got {tuple(keep)}")
  return problems


def problems(section: ml_collections.ConfigDict) -> list[str]:
  """What is wrong with a `detection` config section, as 'detection.<field>: <problem>' lines
  (every invalid detector setting, the watched metric, `callback_problems`); [] if nothing."""
  found = [
    f"detection.{field}: {message}"
    for field, message in detector_settings(section, check=False).problems()
  ]
  if not is_curve_name(section.metric):
    found.append(
      f"detection.metric: {section.metric!r} is not a logged curve; use e.g. "
      f"{PROXY!r}, {TRAIN_PROXY!r} or 'train/loss' (names in docs/metrics.md)"
    )
  return found + callback_problems(section.on_detect, section.keep)
