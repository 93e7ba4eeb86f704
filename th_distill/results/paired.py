"""Paired comparisons of a study's arms over seeds: is a difference larger than the seed noise?

Every arm of a study runs on the same seeds, and a seed fixes the oracle, the teacher and the
prompts, so arm A and arm B on one seed differ only by what the study varies. The comparison of
an arm with the reference arm is therefore paired: d_s = value_A(s) - value_B(s) for each seed s
both ran, and the difference exceeds the seed-to-seed noise when a two-sided paired t-test on the
d_s rejects a zero mean at the 5% level (t = mean(d) / (sd(d) / sqrt(n)), n - 1 degrees of
freedom; needs n >= 2 seeds). `same_sign` counts the seeds whose d_s has the sign of the mean.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

# Keys of a run summary (`summaries.summarize_run`) compared between arms.
COMPARED = ("golden_final", "golden_rise_pct", "proxy_final", "train_loss_final")
LEVEL = 0.05


def compare(
  seeds_a: Mapping[str, Mapping[str, Any]], seeds_b: Mapping[str, Mapping[str, Any]], key: str
) -> dict[str, Any] | None:
  """The paired difference A - B of `key` over the seeds both arms hold (module docstring);
  None where fewer than two seeds have a finite value in both."""
  common = [s for s in seeds_a if s in seeds_b]
  pairs = [(seeds_a[s].get(key), seeds_b[s].get(key)) for s in common]
  diffs = np.array(
    [
      a - b
      for a, b in pairs
      if a is not None and b is not None and np.isfinite(a) and np.isfinite(b)
    ],
    dtype=float,
  )
  if len(diffs) < 2:
    return None
  mean, sd = float(diffs.mean()), float(diffs.std(ddof=1))
  if sd == 0:
    p_value = 0.0 if mean != 0 else 1.0
  else:
    t = mean / (sd / np.sqrt(len(diffs)))
    p_value = float(2 * stats.t.sf(abs(t), df=len(diffs) - 1))
  return {
    "n": len(diffs),
    "mean": mean,
    "sd": sd,
    "p_value": p_value,
    "same_sign": int(np.sum(np.sign(diffs) == np.sign(mean))) if mean else 0,
    "exceeds_seed_noise": bool(p_value < LEVEL),
    "differences": diffs.tolist(),
  }


def compare_arms(
  arms: Mapping[str, Mapping[str, Any]],
  reference: str,
  references: Mapping[str, str] | None = None,
) -> dict[str, Any]:
  """{arm: {key: compare(arm, its reference, key)}} for every arm that is no reference; an
  arm's reference is `references[arm]` if given (e.g. each family of a study against its own
  baseline), else `reference`; `arms` maps a label to its {'seeds': {seed: run summary}} (a
  study summary's `arms`)."""
  references = dict(references or {})
  bases = {reference, *references.values()}
  for base in bases:
    if base not in arms:
      raise ValueError(f"reference arm {base!r} is not one of {sorted(arms)}")
  return {
    label: {
      key: compare(arm["seeds"], arms[references.get(label, reference)]["seeds"], key)
      for key in COMPARED
    }
    for label, arm in arms.items()
    if label not in bases
  }


def _cell(result: Mapping[str, Any] | None, spec: str) -> str:
  if result is None:
    return "–"
  mark = " **\\***" if result["exceeds_seed_noise"] else ""
  return (
    f"{result['mean']:{spec}} ± {result['sd']:{spec.lstrip('+')}} "
    f"({result['same_sign']}/{result['n']}, p {result['p_value']:.2g}){mark}"
  )


def table(
  comparisons: Mapping[str, Mapping[str, Any]],
  reference: str,
  references: Mapping[str, str] | None = None,
) -> list[str]:
  """Markdown lines: one row per arm, the paired differences from its reference
  (`compare_arms`); an arm with a reference of its own is shown as `arm − reference`."""
  references = dict(references or {})
  lines = [
    f"Paired over seeds, each arm minus `{reference}`"
    + (" (or the reference its row names)" if references else "")
    + ": mean ± sd of the per-seed "
    "difference (seeds with the mean's sign / seeds, two-sided paired t-test p); "
    f"**\\*** = larger than the seed-to-seed noise (p < {LEVEL:g}).",
    "",
    "| arm | Δ golden final | Δ golden rise (points) | Δ proxy final | Δ training loss final |",
    "|---|---|---|---|---|",
  ]
  for label, row in comparisons.items():
    shown = f"{label} − {references[label]}" if label in references else label
    lines.append(
      f"| {shown} | {_cell(row['golden_final'], '+.4f')} | "
      f"{_cell(row['golden_rise_pct'], '+.1f')} | {_cell(row['proxy_final'], '+.4f')} "
      f"| {_cell(row['train_loss_final'], '+.4f')} |"
    )
  return lines
