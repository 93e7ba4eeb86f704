"""Figures of runs and studies, written as PNG files (no display needed: matplotlib falls back to
its Agg backend on a headless machine; in Jupyter the backend is left as the user set it).

Curves are dicts `{label: Curve}`; a `Curve` holds one run or the seeds of one arm of a study
(`values` is [seeds, evaluations]); bands span the seeds' min..max around their mean. Steps are
drawn on a log axis from step 1 (convergence laws are straight or bent lines there).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from th_distill import boundary
from th_distill.detection import Detection


@dataclasses.dataclass(frozen=True)
class Curve:
  """`steps` [E]; `values` [S, E] for S seeds (S = 1 for one run)."""

  steps: np.ndarray
  values: np.ndarray

  @property
  def mean(self) -> np.ndarray:
    """Mean over the seeds at each evaluation, NaN where no seed has a finite value."""
    finite = np.isfinite(self.values)
    count = finite.sum(axis=0)
    total = np.where(finite, self.values, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _save(fig, path: str) -> None:
  """Writes `fig` to the PNG file `path` atomically, never through a link (`rundir.boundary`)."""
  boundary.write_atomically(
    path, lambda f: fig.savefig(f, dpi=110, format="png"), binary=True, suffix=".png"
  )


def _band(ax, label: str, curve: Curve, color=None) -> bool:
  """Draws the seed mean and the min..max band from step 1 on; returns whether any value was
  finite (a diverged run may have none)."""
  keep = (curve.steps >= 1) & np.isfinite(curve.mean)
  (line,) = ax.plot(curve.steps[keep], curve.mean[keep], label=label, color=color)
  if len(curve.values) > 1:
    finite = np.isfinite(curve.values)
    low = np.where(finite, curve.values, np.inf).min(axis=0)
    high = np.where(finite, curve.values, -np.inf).max(axis=0)
    shown = keep & finite.any(axis=0)
    ax.fill_between(
      curve.steps[shown], low[shown], high[shown], color=line.get_color(), alpha=0.2, linewidth=0
    )
  return bool(keep.any())


def plot_metric_panels(
  panels: Sequence[tuple[str, Mapping[str, Curve]]],
  path: str,
  ylabel: str = "nats / token",
  levels: Sequence[Mapping[str, float]] = (),
) -> None:
  """One panel per (title, curves), steps on a log axis, seed bands, one legend per panel that
  has a level; `levels[i]` ({label: value}) draws dashed horizontal lines on panel i (such as
  the teacher's own golden distance)."""
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
  for index, (ax, (title, curves)) in enumerate(zip(axes[0], panels)):
    drawn = [_band(ax, label, curve) for label, curve in curves.items()]
    for label, value in (levels[index] if index < len(levels) else {}).items():
      if np.isfinite(value):
        ax.axhline(value, color="k", linestyle="--", linewidth=1, label=f"{label} {value:.3f}")
        ax.legend(fontsize=8)
    ax.set(
      title=title, xlabel="student step", ylabel=ylabel, xscale="log" if any(drawn) else "linear"
    )
    ax.grid(alpha=0.3, which="both")
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def plot_proxy_golden(
  panels: Sequence[tuple[str, Mapping[str, Curve], Mapping[str, Curve]]], path: str
) -> None:
  """Golden against proxy (seed means), one panel per (title, proxy curves, golden curves); the
  run's start and end are marked. A U shape is teacher hacking (the paper's Figure 4 style)."""
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
  for ax, (title, proxies, goldens) in zip(axes[0], panels):
    drawn = False
    for label, proxy in proxies.items():
      x, y = proxy.mean, goldens[label].mean
      finite = np.isfinite(x) & np.isfinite(y) & (x > 0)
      (line,) = ax.plot(x[finite], y[finite], marker=".", markersize=3, label=label)
      if finite.any():  # the last finite point: the run's end, or where it diverged
        end = np.flatnonzero(finite)[-1]
        ax.plot(x[end], y[end], marker="o", color=line.get_color())
        ax.annotate("end", (x[end], y[end]), color=line.get_color(), fontsize=8)
        drawn = True
    ax.set(
      title=title, xlabel="proxy", ylabel="golden (held-out)", xscale="log" if drawn else "linear"
    )
    ax.grid(alpha=0.3, which="both")
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def plot_detections(
  runs: Mapping[str, tuple[Curve, Curve, Detection]], metric: str, path: str
) -> None:
  """One panel per run: the watched curve, the law the detector fitted (dashed over its window,
  dotted where extrapolated), the firing step (red line), and the golden minimum (green line,
  golden on the right axis)."""
  count = len(runs)
  columns = min(count, 3)
  rows = -(-count // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
  for ax, (label, (watched, golden, found)) in zip(axes.ravel(), runs.items()):
    steps, values = watched.steps, watched.values[0]
    keep = (steps >= 1) & np.isfinite(values)
    ax.plot(steps[keep], values[keep], ".-", color="C0", markersize=3, label=metric)
    if found.fit.ok:
      first, last = found.fit.x_range
      within = np.geomspace(first, last, 50)
      ax.plot(within, found.fit.predict(within), "--", color="k", label=f"{found.fit.law} law")
      if last < steps[-1]:
        beyond = np.geomspace(last, steps[-1], 50)
        ax.plot(beyond, found.fit.predict(beyond), ":", color="k")
    if found.detected:
      ax.axvline(found.step, color="red", label=f"detector fires @ {found.step}")
    twin = ax.twinx()
    shown = (golden.steps >= 1) & np.isfinite(golden.values[0])
    twin.plot(golden.steps[shown], golden.values[0][shown], color="C2", alpha=0.6)
    if np.isfinite(golden.values[0]).any():  # a diverged run may have no finite golden value
      best = int(np.nanargmin(golden.values[0]))
      ax.axvline(
        golden.steps[best],
        color="C2",
        linestyle="--",
        label=f"golden min @ {int(golden.steps[best])}",
      )
    twin.set_ylabel("golden", color="C2")
    ax.set(
      title=label,
      xscale="log" if keep.any() or shown.any() else "linear",
      xlabel="student step",
      ylabel=metric.split("/")[-2] + " " + metric.split("/")[-1],
    )
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3, which="both")
  for ax in axes.ravel()[count:]:
    ax.axis("off")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def plot_cost(arms: Mapping[str, Mapping[str, Sequence[float]]], path: str) -> None:
  """Golden distance against generation cost, one point per arm (the mean over seeds, bars one
  standard deviation): `arms[label]` holds per-seed `generation_flops`, `golden_min`,
  `golden_final` and `golden_trend_pct_per_doubling`; generation FLOPs on a log axis."""
  fig, axes = plt.subplots(1, 2, figsize=(14, 4.8))
  panels = (
    ("golden at its minimum (o) and at the end (x)", ("golden_min", "golden_final")),
    ("golden trend after its minimum, % per doubling", ("golden_trend_pct_per_doubling",)),
  )
  for ax, (title, keys) in zip(axes, panels):
    for index, (label, values) in enumerate(arms.items()):
      x = np.asarray(values["generation_flops"], float)
      color = plt.cm.tab20(index % 20)
      for key, marker in zip(keys, "ox"):
        y = np.array([np.nan if v is None else v for v in values[key]], float)
        if not np.isfinite(y).any():
          continue
        ax.errorbar(
          np.nanmean(x),
          np.nanmean(y),
          yerr=np.nanstd(y),
          fmt=marker,
          color=color,
          label=label if marker == "o" else None,
          capsize=2,
        )
    ax.set(title=title, xlabel="generation FLOPs of the training data", xscale="log")
    ax.grid(alpha=0.3, which="both")
  axes[1].axhline(0.0, color="k", linewidth=0.8)
  fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="center right")
  fig.tight_layout(rect=(0, 0, 0.78, 1))
  _save(fig, path)
  plt.close(fig)


def plot_rise_vs_gap(points: Sequence[Mapping[str, object]], path: str) -> None:
  """The golden rise (%) against the teacher-student gap, one panel per regime, one point per
  run and length (`results.gap_map.run_points`: `setting`, `regime`, `length`, `gap`,
  `rise_pct`), coloured by setting; 1x hollow, 2x filled, 4x filled squares; the student
  passed its teacher right of the dotted line."""
  regimes = sorted({str(p["regime"]) for p in points}) or ["(no runs)"]
  settings = list(dict.fromkeys(str(p["setting"]) for p in points))
  fig, axes = plt.subplots(
    1, len(regimes), figsize=(5.5 * len(regimes) + 2.5, 4.6), squeeze=False, sharey=True
  )
  for ax, regime in zip(axes[0], regimes):
    for index, setting in enumerate(settings):
      color = plt.cm.tab10(index % 10) if len(settings) <= 10 else plt.cm.tab20(index % 20)
      for length, fill, marker in (("1x", "none", "o"), ("2x", color, "o"), ("4x", color, "s")):
        chosen = [
          p
          for p in points
          if (p["regime"], p["setting"], p["length"]) == (regime, setting, length)
          and p["gap"] is not None
        ]
        if chosen:
          ax.scatter(
            [p["gap"] for p in chosen],
            [p["rise_pct"] for p in chosen],
            edgecolors=color,
            facecolors=fill,
            marker=marker,
            label=f"{setting} {length}",
          )
    ax.axvline(0.0, color="k", linestyle=":", linewidth=0.8)
    ax.set(
      title=regime,
      xlabel="gap = teacher golden − student golden min (nats/token)",
      ylabel="golden rise after its minimum (%)",
    )
    ax.grid(alpha=0.3)
  handles, labels = axes[0][0].get_legend_handles_labels()
  if handles:
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(0.8, 0.5))
  fig.tight_layout(rect=(0, 0, 0.8, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
