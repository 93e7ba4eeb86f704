"""Run summary, plots and report: `summary.json`, `curves.png`, `proxy_golden.png`, `report.md`.

The headline metrics (docs/metrics.md) are forward KLs measured on samples of their reference
model, which makes them estimates of sequence-level KLs:
- golden = `eval_oracle/golden/fkl`: KL(oracle || student) per token on oracle samples of held-out
  prompts;
- proxy = `eval_teacher/proxy/fkl`: KL(teacher || student) per token on teacher samples of
  held-out prompts;
- training-prompt proxy = `train_teacher/proxy/fkl`: the same on teacher samples of training
  prompts (for `offline`, the student's own training examples).

A regime is flagged `hacking` when golden ends at least `hacking_threshold_pct` above its minimum
while the training-prompt proxy at the end is below its value at the golden minimum.
"""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from th_distill import checkpoints  # noqa: E402
from th_distill.metrics_io import GOLDEN, PROXY, TRAIN_PROXY, read_metrics  # noqa: E402


def summarize_curve(rows: list[dict[str, Any]], threshold_pct: float) -> dict[str, Any]:
  """Summary of one regime's metrics rows (design.md section 4 keys)."""
  steps = np.array([r["step"] for r in rows])
  golden = np.array([r[GOLDEN] for r in rows], dtype=float)
  train_proxy = np.array([r[TRAIN_PROXY] for r in rows], dtype=float)
  best = int(np.nanargmin(golden))
  rise = 100.0 * (golden[-1] - golden[best]) / golden[best]
  return {
      "golden_metric": GOLDEN, "proxy_metric": PROXY, "train_proxy_metric": TRAIN_PROXY,
      "golden_min": float(golden[best]), "golden_min_step": int(steps[best]),
      "golden_final": float(golden[-1]), "golden_rise_pct": float(rise),
      "proxy_final": float(rows[-1][PROXY]),
      "train_proxy_at_golden_min": float(train_proxy[best]),
      "train_proxy_final": float(train_proxy[-1]),
      "hacking": bool(rise >= threshold_pct and train_proxy[-1] < train_proxy[best]),
      "final_step": int(steps[-1]),
  }


def _plot_curves(curves: dict[str, list[dict[str, Any]]], path: str) -> None:
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  panels = ((GOLDEN, "golden: KL(oracle || student), held-out"),
            (PROXY, "proxy: KL(teacher || student), held-out"),
            (TRAIN_PROXY, "proxy on training prompts"))
  for ax, (metric, title) in zip(axes, panels):
    for regime, rows in curves.items():
      ax.plot([r["step"] for r in rows], [r[metric] for r in rows], label=regime)
    ax.set(title=title, xlabel="student step", ylabel="nats / token")
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_proxy_golden(curves: dict[str, list[dict[str, Any]]], path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
  for ax, proxy, where in ((axes[0], PROXY, "held-out"), (axes[1], TRAIN_PROXY, "training")):
    for regime, rows in curves.items():
      x = [r[proxy] for r in rows]
      y = [r[GOLDEN] for r in rows]
      line, = ax.plot(x, y, marker=".", label=regime)
      ax.annotate("end", (x[-1], y[-1]), color=line.get_color(), fontsize=8)
    ax.set(title=f"golden vs proxy ({where} prompts)", xlabel=f"proxy ({where})",
           ylabel="golden (held-out)", xscale="log")
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _markdown(summary: dict[str, Any]) -> str:
  lines = ["# th_distill run report", "",
           f"Teacher golden fkl (KL(oracle || teacher) per token, oracle samples): "
           f"{summary['teacher']['golden_fkl']:.3f}", "",
           "| regime | golden min @ step | golden final | rise % | proxy final | "
           "train-prompt proxy at golden min -> final | hacking |",
           "|---|---|---|---|---|---|---|"]
  for regime, s in summary["regimes"].items():
    lines.append(f"| {regime} | {s['golden_min']:.4f} @ {s['golden_min_step']} | "
                 f"{s['golden_final']:.4f} | {s['golden_rise_pct']:+.1f} | {s['proxy_final']:.4f} "
                 f"| {s['train_proxy_at_golden_min']:.4f} -> {s['train_proxy_final']:.4f} | "
                 f"{'yes' if s['hacking'] else 'no'} |")
  lines += ["", f"golden = `{GOLDEN}`, proxy = `{PROXY}`, training-prompt proxy = "
            f"`{TRAIN_PROXY}` (per-token means; see docs/metrics.md).", "",
            "![curves](curves.png)", "", "![proxy-golden](proxy_golden.png)", ""]
  return "\n".join(lines)


def write_report(workdir: str, regimes: list[str], threshold_pct: float) -> dict[str, Any]:
  """Reads every regime's metrics.jsonl and writes summary.json, the plots and report.md."""
  curves = {r: read_metrics(os.path.join(workdir, r, "metrics.jsonl")) for r in regimes}
  curves = {r: rows for r, rows in curves.items() if rows}
  stage1 = checkpoints.read_json(os.path.join(workdir, "stage1", "info.json"))
  summary = {
      "teacher": {"golden_fkl": stage1["teacher/golden/fkl@oracle_samples"],
                  **{k: v for k, v in stage1.items() if k.startswith("teacher/")}},
      "regimes": {r: summarize_curve(rows, threshold_pct) for r, rows in curves.items()},
  }
  checkpoints.write_json(os.path.join(workdir, "summary.json"), summary)
  _plot_curves(curves, os.path.join(workdir, "curves.png"))
  _plot_proxy_golden(curves, os.path.join(workdir, "proxy_golden.png"))
  with open(os.path.join(workdir, "report.md"), "w", encoding="utf-8") as f:
    f.write(_markdown(summary))
  return summary
