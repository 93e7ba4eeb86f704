"""How often the golden trend (`th_distill.results.trend`) calls a flat curve rising, and a U rising.

  python bench/trend_calibration.py [--draws=1000]

Flat: a decay to a constant level (0.6 + 0.3 exp(-t / 200)) times 1% AR(1) noise of lag-1
correlation rho, at the default study's evaluation steps (2,000 steps, every 100, 30 log points).
U: down to 0.6 by step 300, then +3% of the minimum per doubling of the steps, with the same
noise. Prints the fraction of draws whose trend is `rising` (docs/metrics.md quotes it).
"""

from __future__ import annotations

import argparse

import numpy as np

from th_distill.observing import eval_schedule
from th_distill.results import trend


def ar1(rng: np.random.Generator, size: int, rho: float) -> np.ndarray:
  """Unit-variance AR(1) noise [size] with lag-1 correlation `rho`."""
  noise = np.empty(size)
  noise[0] = rng.normal()
  for i in range(1, size):
    noise[i] = rho * noise[i - 1] + np.sqrt(1 - rho**2) * rng.normal()
  return noise


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--draws", type=int, default=1000)
  args = parser.parse_args()
  steps = np.array(eval_schedule.evaluation_steps(2000, 100, 30), dtype=float)
  flat = 0.6 + 0.3 * np.exp(-steps / 200)
  u = 0.6 * (1 + 0.03 * np.log2(np.maximum(steps, 300) / 300)) + 0.3 * np.exp(-steps / 60)
  rng = np.random.default_rng(0)
  for rho in (0.0, 0.5, 0.8):
    for name, curve in (("flat", flat), ("U", u)):
      rising = sum(
        trend.trend_after_minimum(steps, curve * (1 + 0.01 * ar1(rng, len(steps), rho))).rising
        for _ in range(args.draws)
      )
      print(f"rho {rho:.1f} {name:4s} rising in {rising / args.draws:.1%} of {args.draws} draws")


if __name__ == "__main__":
  main()
