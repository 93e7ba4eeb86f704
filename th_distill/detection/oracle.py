"""What the oracle says of a run (`ground_truth`): the golden minimum and the rise after it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def ground_truth(
  steps: Sequence[int], golden: Sequence[float], threshold_pct: float
) -> dict[str, Any]:
  """What the oracle says of a run: the golden minimum, its step, the relative rise after it
  (100 * (final - min) / min) and whether that rise reaches `threshold_pct`."""
  steps, golden = np.asarray(steps), np.asarray(golden, dtype=float)
  finite = np.isfinite(golden)
  if not np.any(finite):
    return {
      "golden_min": float("nan"),
      "golden_min_step": None,
      "golden_rise_pct": float("nan"),
      "golden_rises": False,
    }
  best = int(np.nanargmin(np.where(finite, golden, np.nan)))
  final = golden[np.flatnonzero(finite)[-1]]
  rise = 100.0 * (final - golden[best]) / golden[best]
  return {
    "golden_min": float(golden[best]),
    "golden_min_step": int(steps[best]),
    "golden_rise_pct": float(rise),
    "golden_rises": bool(rise >= threshold_pct),
  }
