"""Which steps of a run are evaluated: every `every` steps, plus log-spaced early steps.

Convergence laws (`th_distill.detection`) are fitted in log time, so a curve evaluated only every
100 steps has almost no points where it falls fastest. `log_points` adds that many steps spaced
evenly in log(step) over [1, total]; they are rounded and merged with the regular ones.
"""

from __future__ import annotations

import numpy as np


def evaluation_steps(total: int, every: int, log_points: int = 0) -> tuple[int, ...]:
  """Sorted steps in [0, total] to evaluate: 0, multiples of `every`, `total` itself, and
  `log_points` steps log-spaced over [1, total] (fewer when rounding merges them)."""
  if total < 0 or every <= 0 or log_points < 0:
    raise ValueError(
      f"Need total >= 0, every > 0, log_points >= 0; got {total}, {every}, {log_points}."
    )
  steps = set(range(0, total + 1, every)) | {total}
  if log_points and total >= 1:
    steps |= {int(s) for s in np.rint(np.geomspace(1, total, log_points))}
  return tuple(sorted(steps))
