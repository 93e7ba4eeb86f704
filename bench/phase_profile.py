"""Where the default study's wall time goes, phase by phase, against two matmul ceilings.

  python bench/phase_profile.py [--src DIR ...] [--config configs/tiny.py] [--json out.json]
                                [--logs DIR]

For each source tree (`--src`, repeatable, default: this tree; the trees run in turn) it runs
`python -m th_distill.main --config=CONFIG --workdir=<fresh temp dir>` in a subprocess started in
DIR with `PYTHONPATH=DIR`, so an old snapshot of the code runs beside the new one, and reads its
absl log (stderr):
- each phase's wall seconds, from the timestamps of its first "<title>: starting (...)" line to
  its "<title>: done in ..." line; a phase run inside another by the same thread (the offline
  dataset, built by regime 1) is subtracted from the enclosing one; regimes that ran side by
  side (a thread each) keep their own spans, and a row "regimes side by side (rows overlap)"
  takes back the time counted twice, so the rows add up to the total;
- startup (process start to the first log line: imports and backend; then to the first phase:
  the plan), the time between phases, the tail (last phase done to exit) and the total;
- the plan's lower bound ("time: at least ..., the work's FLOPs at this machine's matmul rate").

FLOPs per phase are the plan's own (`th_distill.planning.workload.phases` of CONFIG, as the run's
plan lists them), from this tree's library. Ceilings, measured in this process after each run:
- the jitted 2048 x 2048 float32 matmul (`bench.common.matmul_probe`, as `matmul_peak_flops`
  times it), timed in the same turns as the chains below;
- per phase, a same-shape ceiling: the FLOP rate of a jitted `lax.fori_loop` chain (> 50 ms per
  call) of the matmuls that characterise each of its work items (`chain_spec`): for training
  and distillation steps, rows = batch x response length (decoder) and batch x prompt length
  (encoder), each [rows, d_model] projected to heads x d_kv, d_ff and vocab and back, plus the
  weight-gradient product [d_model, rows] x [rows, width]; for evaluations, the same forward
  products at the evaluation batch; for sampling, rows = the sampler's batch (one token per
  decoding step; the encoder's larger products, a minor share, are left out). A phase's
  ceiling time is the sum of its items' FLOPs over their chains' rates: the fastest XLA:CPU runs
  matmuls of those shapes on this machine.

Columns: seconds, FLOPs, achieved GFLOP/s, same-shape ceiling GFLOP/s, seconds / (FLOPs / same-shape
ceiling) and seconds / (FLOPs / 2048 ceiling): how many times slower than pure matmuls of the
phase's shapes, and than the large matmul.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import interleaved_medians, matmul_probe  # noqa: E402
from th_distill import config as config_lib  # noqa: E402
from th_distill.config.run_config import RunConfig  # noqa: E402
from th_distill.data.regimes import SAMPLE_CHUNK  # noqa: E402
from th_distill.observing.progress import Phase, Work  # noqa: E402
from th_distill.planning import workload  # noqa: E402
from th_distill.training import sources  # noqa: E402
from th_distill.training.online_sources import Online  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An absl line: level, MMDD, time, thread, file:line] message.
_ABSL = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+)\s+(\d+) [^\]]*\] (.*)$")
_BOUND = re.compile(
  r"time: at least (.+?) \(the work's FLOPs at this machine's matmul rate, ([\d.]+) GFLOP/s\)"
)
_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "days": 86400.0}
CHAIN_SECONDS = 0.05  # a chain call must take longer than this
MATMUL = "matmul 2048x2048 f32"  # the large matmul's key among the ceilings


def parse_duration(text: str) -> float:
  """Seconds of a `progress.duration` text: '42 s', '3 min 05 s', '2 h 10 min', '3.5 days'."""
  parts = text.split()
  if len(parts) % 2:
    raise ValueError(f"not a duration: {text!r}")
  return sum(float(n) * _UNITS[unit] for n, unit in zip(parts[::2], parts[1::2]))


class LogLine(NamedTuple):
  """One absl line: its POSIX time, message and thread id."""

  time: float
  message: str
  thread: int


class Interval(NamedTuple):
  """A phase's span: its first 'starting' and its 'done' line's times, and the thread that
  logged them (stage 2's regimes side by side each log from a thread of their own)."""

  start: float
  done: float
  thread: int


def parse_log(text: str, year: int) -> list[LogLine]:
  """Every absl line of `text` (local timestamps of `year`; a line of an earlier month than the
  first belongs to the next year); other lines are skipped."""
  lines, first_month = [], None
  for line in text.splitlines():
    m = _ABSL.match(line)
    if not m:
      continue
    month, day, hour, minute, second = (int(g) for g in m.groups()[:5])
    first_month = first_month or month
    micros = int(m[6].ljust(6, "0")[:6])
    when = datetime.datetime(year + (month < first_month), month, day, hour, minute, second, micros)
    lines.append(LogLine(when.timestamp(), m[8], int(m[7])))
  return lines


def phase_intervals(lines: Sequence[LogLine], titles: Sequence[str]) -> dict[str, Interval]:
  """{title: its `Interval`} of each phase of `titles` found in `lines`."""
  found: dict[str, Interval] = {}
  for title in titles:
    start = next((line for line in lines if line.message.startswith(f"{title}: starting (")), None)
    done = next((line for line in lines if line.message.startswith(f"{title}: done in ")), None)
    if start is not None and done is not None:
      found[title] = Interval(start.time, done.time, start.thread)
  return found


def logged_titles(lines: Sequence[LogLine]) -> list[str]:
  """The titles of the phases that logged a 'starting' line, in order."""
  titles = [
    line.message.split(": starting (")[0] for line in lines if ": starting (" in line.message
  ]
  return list(dict.fromkeys(titles))


def exclusive_seconds(intervals: dict[str, Interval]) -> dict[str, float]:
  """Each interval's length minus those of the intervals of the same thread nested in it (one
  level: a phase run inside another, as the offline dataset inside the regime that asked for
  it). Regimes side by side, each in a thread of its own, are never subtracted from one
  another: their rows overlap in time (`covered_seconds`)."""
  return {
    title: outer.done
    - outer.start
    - sum(
      inner.done - inner.start
      for other, inner in intervals.items()
      if other != title
      and inner.thread == outer.thread
      and outer.start <= inner.start
      and inner.done <= outer.done
      and inner[:2] != outer[:2]
    )
    for title, outer in intervals.items()
  }


def covered_seconds(intervals: Collection[Interval]) -> float:
  """The length of the union of `intervals`: the wall time in which some phase ran."""
  covered, reach = 0.0, float("-inf")
  for start, done, _ in sorted(intervals):
    if done > reach:
      covered += done - max(start, reach)
      reach = done
  return covered


def lower_bound(lines: Sequence[LogLine]) -> tuple[float, float] | None:
  """(seconds, GFLOP/s) of the plan's 'time: at least ...' line, or None."""
  for line in lines:
    m = _BOUND.search(line.message)
    if m:
      return parse_duration(m[1]), float(m[2])
  return None


def run_config(path: str) -> RunConfig:
  """The typed config of a config file, checked from its values alone (no device)."""
  return config_lib.check_fields(config_lib.load_config_file(path))


def plan_phases(config: RunConfig) -> list[Phase]:
  """The run's phases and their work, as its plan lists them (one data-parallel device)."""
  return workload.phases(config, 1)


def phase_flops(phase: Phase) -> float:
  """FLOPs of all of a phase's work (the figure of its plan line)."""
  return sum(w.units * w.flops for w in phase.work.values())


@dataclasses.dataclass(frozen=True)
class ChainSpec:
  """A chain of matmuls: per link and per row count in `rows`, [rows, d_model] x [d_model, W]
  and back [rows, W] x [W, d_model] for each W in `widths`, plus [d_model, rows] x [rows, W]
  (a weight gradient) if `backward`."""

  label: str  # 'train', 'forward' or 'decode'
  rows: tuple[int, ...]
  d_model: int
  widths: tuple[int, ...]
  backward: bool

  @property
  def name(self) -> str:
    """'train 256+512 rows, 64->64/128/64': the shapes (specs of equal shapes share a name)."""
    rows, widths = "+".join(map(str, self.rows)), "/".join(map(str, self.widths))
    return f"{self.label} {rows} rows, {self.d_model}->{widths}"

  @property
  def link_flops(self) -> float:
    per = 6 if self.backward else 4
    return float(sum(per * r * self.d_model * w for r in self.rows for w in self.widths))


def _widths(cfg: Any) -> tuple[int, tuple[int, ...]]:
  return cfg.d_model, (cfg.num_heads * cfg.d_kv, cfg.d_ff, cfg.vocab_size)


def chain_spec(config: RunConfig, phase: Phase, work: Work) -> ChainSpec:
  """The matmul shapes that characterise one work item of a phase (module docstring)."""
  li, lt = config.task.prompt_length, config.task.response_length
  if work.kind in ("sft", "distill", "eval"):
    model = "teacher" if phase.key == workload.TEACHER_SFT else "student"
    if work.kind == "sft":
      batch = getattr(config, model).sft.batch_size
    else:
      batch = config.eval.batch_size if work.kind == "eval" else config.student.batch_size
    e, widths = _widths(config.model(model))
    label = "forward" if work.kind == "eval" else "train"
    return ChainSpec(label, (batch * li, batch * lt), e, widths, work.kind != "eval")
  # Sampling: which model samples, and how many rows one decoding step has.
  stage1 = phase.key in (workload.ORACLE_CALIBRATION, workload.ORACLE_SAMPLES, workload.EVAL_SETS)
  model = "oracle" if stage1 else "teacher"
  if work.name == "sampling passes":
    rows = workload.calibration_rows(config.prompts.num_eval, 1)
  elif work.name == Online.GENERATED:
    regime = phase.key.removeprefix(workload.regime_key(""))
    model = sources.source_class(regime).samplers[0]
    rows = config.student.batch_size
  else:
    rows = min(SAMPLE_CHUNK, work.units)
  e, widths = _widths(config.model(model))
  return ChainSpec("decode", (rows,), e, widths, False)


def chain_program(spec: ChainSpec) -> Callable[[int], Any]:
  """`call(n)`: n links of `spec` in one jitted `lax.fori_loop` (compiled once, n traced). The
  weights are orthonormal (in and back is the identity or a projection), so values stay
  bounded; the weight-gradient products accumulate into outputs, so none is dead code."""
  rng = np.random.default_rng(0)
  e = spec.d_model
  weights = []
  for w in spec.widths:
    q, _ = np.linalg.qr(rng.standard_normal((max(e, w), min(e, w))))
    w_in = q.T if w >= e else q  # [e, w]
    weights.append((jnp.asarray(w_in, jnp.float32), jnp.asarray(w_in.T, jnp.float32)))
  xs = tuple(jnp.asarray(rng.standard_normal((r, e)), jnp.float32) for r in spec.rows)
  grads = tuple(jnp.zeros((e, w), jnp.float32) for _ in spec.rows for w in spec.widths)

  def link(_, carry):
    xs, grads = carry
    new_xs, new_grads = [], list(grads)
    for i, x in enumerate(xs):
      for j, (w_in, w_out) in enumerate(weights):
        h = x @ w_in
        if spec.backward:
          new_grads[i * len(weights) + j] += x.T @ h
        x = h @ w_out
      new_xs.append(x)
    return tuple(new_xs), tuple(new_grads)

  run = jax.jit(lambda xs, grads, n: jax.lax.fori_loop(0, n, link, (xs, grads)))
  return lambda n: run(xs, grads, n)


def chain_ceilings(specs: Sequence[ChainSpec], repeats: int = 5) -> dict[str, float]:
  """FLOP/s of each spec's chain (its length doubled until a call takes > `CHAIN_SECONDS`) and
  of the 2048 x 2048 float32 matmul (`MATMUL`; `bench.common.matmul_probe`), timed in turns."""
  call, flops = matmul_probe(2048)
  calls = {MATMUL: (call, flops)}
  for spec in specs:
    call, n = chain_program(spec), 4
    while True:
      jax.block_until_ready(call(n))  # compiles at the first n
      start = time.perf_counter()
      jax.block_until_ready(call(n))
      if time.perf_counter() - start > CHAIN_SECONDS:
        break
      n *= 2
    calls[spec.name] = functools.partial(call, n), n * spec.link_flops
  seconds = interleaved_medians({k: c for k, (c, _) in calls.items()}, repeats, warmup=1)
  return {k: calls[k][1] / s for k, s in seconds.items()}


def run_study(
  src: str,
  config: str,
  logs: str | None,
  extra_args: Sequence[str] = (),
  timeout: float | None = None,
) -> dict[str, Any]:
  """Runs the study of `config` (and `extra_args` flags) with the code of `src` in a fresh
  workdir, stopped after `timeout` seconds if given; its log text (stderr), start and end times
  and exit status (None if stopped). `logs`: a directory to keep the log in."""
  env = dict(os.environ, PYTHONPATH=src)
  with tempfile.TemporaryDirectory(prefix="phase_profile_") as workdir:
    command = [
      sys.executable,
      "-m",
      "th_distill.main",
      f"--config={config}",
      f"--workdir={workdir}",
      *extra_args,
    ]
    start = time.time()
    try:
      done = subprocess.run(
        command, cwd=src, env=env, capture_output=True, text=True, timeout=timeout
      )
      log, returncode = done.stderr, done.returncode
    except subprocess.TimeoutExpired as stopped:
      err = stopped.stderr or ""
      log, returncode = err.decode(errors="replace") if isinstance(err, bytes) else err, None
    end = time.time()
  if logs:
    os.makedirs(logs, exist_ok=True)
    name = re.sub(r"\W+", "_", os.path.abspath(src)).strip("_")
    with open(os.path.join(logs, f"{name}.log"), "w", encoding="utf-8") as f:
      f.write(log)
  return {"log": log, "start": start, "end": end, "returncode": returncode}


def profile(
  log: str, start: float, end: float, config: RunConfig, ceilings: dict[str, float], peak: float
) -> dict[str, Any]:
  """The rows of one run's table from its log text and process `start` / `end` times."""
  lines = parse_log(log, datetime.datetime.fromtimestamp(start).year)
  phases = plan_phases(config)
  intervals = phase_intervals(lines, [p.title for p in phases])
  own = exclusive_seconds(intervals)
  rows = []
  for phase in phases:
    flops = phase_flops(phase)
    ceiling_s = sum(
      w.units * w.flops / ceilings[chain_spec(config, phase, w).name]
      for w in phase.work.values()
      if w.units
    )
    seconds = own.get(phase.title)
    rows.append(
      {
        "phase": phase.title,
        "seconds": seconds,
        "flops": flops,
        "achieved_gflops": flops / seconds / 1e9 if seconds else None,
        "ceiling_gflops": flops / ceiling_s / 1e9 if ceiling_s else None,
        "ceiling_seconds": ceiling_s,
        "ratio_same_shape": seconds / ceiling_s if seconds and ceiling_s else None,
        "ratio_2048": seconds / (flops / peak) if seconds and flops else None,
      }
    )
  first_log = lines[0].time if lines else end
  first_phase = min((i.start for i in intervals.values()), default=end)
  last_done = max((i.done for i in intervals.values()), default=end)
  total = end - start
  covered = covered_seconds(intervals.values())
  bound = lower_bound(lines)
  return {
    "total_seconds": total,
    "startup_seconds": first_phase - start,
    "imports_seconds": first_log - start,
    "plan_seconds": first_phase - first_log,
    "between_phases_seconds": (last_done - first_phase) - covered,
    # Negative: the time counted in more than one row (regimes that ran side by side).
    "overlap_seconds": covered - sum(own.values()),
    "tail_seconds": end - last_done,
    "phases": rows,
    "total_flops": sum(r["flops"] for r in rows),
    "lower_bound_seconds": bound[0] if bound else None,
    "lower_bound_gflops": bound[1] if bound else None,
    "wall_over_bound": total / bound[0] if bound and bound[0] else None,
  }


def _num(value: float | None, fmt: str) -> str:
  return "-" if value is None else format(value, fmt)


def table(result: dict[str, Any], peak: float) -> str:
  """The printed table of one run."""
  total = result["total_seconds"]
  lines = [
    f"{'phase':<46} {'seconds':>8} {'share':>6} {'GFLOP':>8} {'GFLOP/s':>8} "
    f"{'same-shape':>10} {'x same':>7} {'x 2048':>7}"
  ]
  extra = [
    ("startup: imports, backend (to the first log line)", result["imports_seconds"]),
    ("startup: the plan (to the first phase)", result["plan_seconds"]),
  ]
  for label, seconds in extra:
    lines.append(f"{label:<46} {seconds:>8.1f} {100 * seconds / total:>5.1f}%")
  for r in result["phases"]:
    share = "-" if r["seconds"] is None else f"{100 * r['seconds'] / total:.1f}%"
    lines.append(
      f"{r['phase']:<46} {_num(r['seconds'], '8.1f'):>8} {share:>6} {r['flops'] / 1e9:>8.1f} "
      f"{_num(r['achieved_gflops'], '.1f'):>8} {_num(r['ceiling_gflops'], '.1f'):>10} "
      f"{_num(r['ratio_same_shape'], '.1f'):>7} {_num(r['ratio_2048'], '.1f'):>7}"
    )
  for label, seconds in (
    ("regimes side by side (rows overlap)", result["overlap_seconds"]),
    ("between phases", result["between_phases_seconds"]),
    ("tail (last phase done to exit)", result["tail_seconds"]),
  ):
    lines.append(f"{label:<46} {seconds:>8.1f} {100 * seconds / total:>5.1f}%")
  flops = result["total_flops"]
  ceiling_s = sum(r["ceiling_seconds"] for r in result["phases"])
  lines.append(
    f"{'total':<46} {total:>8.1f} {100.0:>5.1f}% {flops / 1e9:>8.1f} {flops / total / 1e9:>8.1f} "
    f"{flops / ceiling_s / 1e9:>10.1f} {total / ceiling_s:>7.1f} {total / (flops / peak):>7.1f}"
  )
  if result["lower_bound_seconds"]:
    lines.append(
      f"plan's lower bound: {result['lower_bound_seconds']:.0f} s at "
      f"{result['lower_bound_gflops']:.0f} GFLOP/s; wall / bound = {result['wall_over_bound']:.1f}"
    )
  return "\n".join(lines)


def _commit(src: str) -> str | None:
  try:
    out = subprocess.run(
      ["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return out.stdout.strip() or None
  except OSError:
    return None


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--src", action="append", help="source tree to run (repeatable)")
  parser.add_argument("--config", default="configs/tiny.py", help="relative to each tree")
  parser.add_argument("--repeats", type=int, default=5, help="turns of the ceiling timings")
  parser.add_argument("--logs", default="", help="keep each run's log in this directory")
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  trees = [os.path.abspath(s) for s in (args.src or [REPO])]
  config = run_config(os.path.join(REPO, args.config))
  phases = plan_phases(config)
  specs = {
    s.name: s
    for p in phases
    for w in p.work.values()
    if w.units
    for s in [chain_spec(config, p, w)]
  }
  load_start = os.getloadavg()[0]
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, load average {load_start:.2f}")
  results = []
  for src in trees:
    print(f"\n{src} ({_commit(src) or 'no git'}): running the study ...", flush=True)
    run = run_study(src, args.config, args.logs or None)
    if run["returncode"]:
      print(run["log"][-3000:])
      raise SystemExit(f"the study of {src} failed (exit status {run['returncode']})")
    ceilings = chain_ceilings(list(specs.values()), args.repeats)
    peak = ceilings.pop(MATMUL)
    result = profile(run["log"], run["start"], run["end"], config, ceilings, peak)
    result.update(
      src=src,
      commit=_commit(src),
      matmul_2048_gflops=peak / 1e9,
      chain_gflops={k: v / 1e9 for k, v in ceilings.items()},
      load_average=os.getloadavg()[0],
    )
    results.append(result)
    chains = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in ceilings.items())
    print(
      f"ceilings after the run, in the same turns: 2048^2 float32 matmul {peak / 1e9:.1f} GFLOP/s; "
      f"same-shape chains (GFLOP/s): {chains}; load average {result['load_average']:.2f}"
    )
    print(table(result, peak), flush=True)
  load_end = os.getloadavg()[0]
  print(f"\nload average {load_start:.2f} at start, {load_end:.2f} at end")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(
        {"args": vars(args), "load_average": [load_start, load_end], "runs": results}, f, indent=2
      )


if __name__ == "__main__":
  main()
