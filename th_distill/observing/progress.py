"""Progress lines and time estimates: each phase's ETA from its own units, compile time left out,
and the whole run's ETA from every phase's remaining work.

A run is a list of `Phase`s (oracle calibration, teacher SFT, ..., one per regime), each a list of
`Work` items: `units` of one `kind` of work ('sample' rows or calls, 'sft' steps, 'distill'
steps, 'eval'uations), each unit costing `flops`. The code doing the work calls
`phase.advance(item)` after each unit; the first unit of an item (which compiles its program) is
not timed, the following ones give the item's seconds per FLOP. What is left of a phase is its
items' remaining FLOPs at the best rate known for each: the item's own, else the latest measured
rate of its kind in another phase, else of a similar kind (`FALLBACK`), else the device's matmul
rate (`peak_flops`, a lower bound: such an estimate is shown as 'at least').

`RunClock(phases)` holds a run's phases; the stages report to `clock.phase(key)`. A key the
clock lacks (a stand-alone SFT, `RunClock([])`) gives a phase that times and logs itself alone.

The lines are absl INFO logs. A command line shows them (absl's flags); a call from Python
(`experiment.run`, `study.run`) shows them too, inside `shown()`, unless the caller chose an absl
verbosity: `absl.logging.set_verbosity(absl.logging.WARNING)` before the call silences them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from absl import flags, logging

# The kinds whose measured seconds per FLOP stand in for a kind not measured yet, in order.
FALLBACK = {"sample": ("eval",), "eval": ("sample",), "sft": ("distill",), "distill": ("sft",)}
# A CPU run whose estimate is longer than this gets a warning pointing to docs/scaling.md.
CPU_WARNING_SECONDS = 3 * 3600.0
# A phase logs a progress line at every tenth of its main item (at most one per
# `MIN_LINE_SECONDS`), and after `LOG_EVERY_SECONDS` without one.
LOG_EVERY_SECONDS = 60.0
MIN_LINE_SECONDS = 5.0


def _now() -> float:
  return time.monotonic()


_shown_lock = threading.Lock()
_shown_open = 0  # how many `shown` contexts are open (any thread)


@contextlib.contextmanager
def shown() -> Iterator[None]:
  """Inside, absl INFO logs (the progress lines) are shown when nobody chose a verbosity (no
  parsed command line, no `absl.logging.set_verbosity` call): a library call then talks as the
  command does. A verbosity the caller chose is kept, and the untouched state is restored after
  (the flag's default and the absl logger's own level, so Python's logging governs it again).
  Inside another `shown` (e.g. `experiment.run` calling `training.distiller.Distiller.train`)
  it changes nothing: the outermost one restores the state."""
  global _shown_open
  with _shown_lock:
    _shown_open += 1
    nested = _shown_open > 1
  try:
    with contextlib.nullcontext() if nested else _shown_outermost():
      yield
  finally:
    with _shown_lock:
      _shown_open -= 1


@contextlib.contextmanager
def _shown_outermost() -> Iterator[None]:
  """`shown` where no other is open."""
  verbosity, absl_logger = flags.FLAGS["verbosity"], logging.get_absl_logger()
  if flags.FLAGS.is_parsed() or not verbosity.using_default_value:
    yield
    return
  level = absl_logger.level
  logging.set_verbosity(logging.INFO)
  try:
    yield
  finally:
    verbosity.value, verbosity.using_default_value = verbosity.default, True
    absl_logger.setLevel(level)


def duration(seconds: float) -> str:
  """'42 s', '3 min 05 s', '2 h 10 min', '3.5 days'."""
  if seconds < 60:
    return f"{seconds:.0f} s"
  if seconds < 3600:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
  if seconds < 48 * 3600:
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
  return f"{seconds / 86400:.1f} days"


@dataclasses.dataclass
class Work:
  """`units` of work of one `kind`, each costing `flops`; `done` and the timed part so far."""

  name: str
  kind: str
  units: int
  flops: float
  done: int = 0
  calls: int = 0
  timed_units: int = 0
  timed_seconds: float = 0.0

  @property
  def rate(self) -> float | None:
    """Measured seconds per FLOP (units after the first), or None."""
    if not self.timed_units or self.flops <= 0:
      return None
    return self.timed_seconds / (self.timed_units * self.flops)


class Phase:
  """One phase of a run: its work items, what is done, and its progress lines."""

  def __init__(self, key: str, title: str, work: list[Work], lines: bool = True):
    """`lines`: log a line at every tenth of the main item (False: the caller logs its own,
    with `log_line` or `eta_text`)."""
    self.key, self.title, self.work = key, title, {w.name: w for w in work}
    self.lines = lines
    self.clock: RunClock | None = None
    self.started: float | None = None
    self.finished = False
    self._last_tick = 0.0
    self._last_line = 0.0
    self._logged_estimate = False

  @property
  def main(self) -> Work | None:
    """The item whose units the progress lines count (the first one)."""
    return next(iter(self.work.values()), None)

  def describe(self) -> str:
    """'4,096 samples, ...; 1.2e+12 FLOP': the phase's work."""
    total = sum(w.units * w.flops for w in self.work.values())
    return ", ".join(f"{w.units:,} {w.name}" for w in self.work.values()) + f"; {total:.2g} FLOP"

  def start(self) -> None:
    """Starts the phase's clock (once) and logs its work."""
    if self.started is None:
      self.started = self._last_tick = self._last_line = _now()
      if self.work:
        logging.info("%s: starting (%s)", self.title, self.describe())

  def skip(self, name: str, units: int) -> None:
    """Marks `units` of item `name` (if the phase has it) done before this process started (a
    resumed run)."""
    if name in self.work:
      self.work[name].done = min(self.work[name].units, units)

  def advance(self, name: str, units: int = 1, detail: Callable[[], str] | None = None) -> None:
    """`units` of item `name` are done; the time since the previous unit of this phase is theirs
    (not timed for an item's first call, which compiles its program). `detail()`, called only
    when a progress line is due, adds to it (e.g. a loss)."""
    self.start()
    now = _now()
    item = self.work.setdefault(name, Work(name, name, 0, 0.0))
    item.calls += 1
    if item.calls > 1:
      item.timed_units += units
      item.timed_seconds += now - self._last_tick
    item.done += units
    self._last_tick = now
    main = self.main
    if main is None or name != main.name:
      return
    if main.done >= main.units:
      return
    since_line = now - self._last_line
    if not self._logged_estimate and main.timed_units >= 2 and main.timed_seconds >= 2.0:
      self._logged_estimate = True
      logging.info(
        "%s: %d %s, %s each after the first (which compiles): %s",
        self.title,
        main.units,
        main.name,
        duration_unit(main.timed_seconds / main.timed_units),
        self.eta_text(),
      )
      if self.clock is not None:
        self.clock.warn_if_long()
    elif since_line >= LOG_EVERY_SECONDS or (
      self.lines
      and since_line >= MIN_LINE_SECONDS
      and main.done * 10 // main.units > (main.done - units) * 10 // main.units
    ):
      self.log_line(f", {detail()}" if detail else "")

  def counted(
    self, sample: Callable[..., Any], name: str, per_row: bool = True
  ) -> Callable[..., Any]:
    """`sample(params, prompts, prompt_mask, rng)` (a `sampling.SampleFn`) that advances item
    `name` by its rows (or by 1 call)."""

    def fn(params, prompts, prompt_mask, rng):
      out = sample(params, prompts, prompt_mask, rng)
      self.advance(name, len(prompts) if per_row else 1)
      return out

    return fn

  def log_line(self, detail: str = "") -> None:
    """'<title>: <k>/<n> <unit> (<p>%)<detail>, <elapsed>; <ETAs>'."""
    main = self.main
    self._last_line = _now()
    if main is None:
      return
    logging.info(
      "%s: %d/%d %s (%.0f%%)%s, %s; %s",
      self.title,
      main.done,
      main.units,
      main.name,
      100.0 * main.done / max(main.units, 1),
      detail,
      duration(_now() - self.started) if self.started is not None else "0 s",
      self.eta_text(),
    )

  def rate(self, item: Work) -> tuple[float | None, bool]:
    """(seconds per FLOP for `item`, whether it is a lower bound), or (None, True)."""
    if item.rate is not None:
      return item.rate, False
    if self.clock is not None:
      return self.clock.kind_rate(item.kind)
    return None, True

  def remaining(self) -> tuple[float | None, bool]:
    """(seconds left, whether it is a lower bound); None if some item has no rate at all."""
    total, lower = 0.0, False
    for item in self.work.values():
      left = max(item.units - item.done, 0)
      if not left:
        continue
      rate, bound = self.rate(item)
      if rate is None:
        return None, True
      total += left * item.flops * rate
      lower = lower or bound
    return total, lower

  def eta_text(self) -> str:
    """'phase ETA 20 s, run ETA 4 min 10 s' (or 'at least ...', or 'not known yet')."""
    parts = [f"phase ETA {_estimate(*self.remaining())}"]
    if self.clock is not None:
      parts.append(f"run ETA {_estimate(*self.clock.remaining())}")
    return ", ".join(parts)

  def finish(self) -> None:
    """Logs the phase's time (and the run's ETA); nothing if it never started."""
    if self.started is None or self.finished:
      return
    self.finished = True
    logging.info(
      "%s: done in %s%s",
      self.title,
      duration(_now() - self.started),
      f"; run ETA {_estimate(*self.clock.remaining())}" if self.clock else "",
    )


def duration_unit(seconds: float) -> str:
  """A per-unit time: '17.2 ms', '3.40 s', or `duration` beyond a minute."""
  return (
    f"{seconds * 1e3:.1f} ms"
    if seconds < 1
    else (f"{seconds:.2f} s" if seconds < 60 else duration(seconds))
  )


def _estimate(seconds: float | None, lower: bool) -> str:
  if seconds is None:
    return "not known yet"
  return ("at least " if lower else "") + duration(seconds)


class RunClock:
  """The phases of one run, the rates measured so far, and the whole run's ETA."""

  def __init__(
    self, phases: list[Phase], peak_flops: float | None = None, backend: str | None = None
  ):
    self.phases = {p.key: p for p in phases}
    for p in phases:
      p.clock = self
    self.peak_flops = peak_flops
    self.backend = backend or jax.default_backend()
    self._warned = False
    self._together: list[frozenset[str]] = []

  def run_together(self, keys: Sequence[str]) -> None:
    """Phases `keys` run side by side from now on: the run's ETA counts the longest of them."""
    self._together.append(frozenset(keys))

  def kind_rate(self, kind: str) -> tuple[float | None, bool]:
    """The latest measured seconds per FLOP of `kind` (else of its fallbacks; else the peak
    rate's, a lower bound)."""
    for k in (kind, *FALLBACK.get(kind, ())):
      rates = [
        w.rate
        for p in self._by_recency()
        for w in p.work.values()
        if w.kind == k and w.rate is not None
      ]
      if rates:
        return rates[0], False
    return (1.0 / self.peak_flops if self.peak_flops else None), True

  def _by_recency(self) -> list[Phase]:
    return sorted(
      (p for p in self.phases.values() if p.started is not None), key=lambda p: -p.started
    )

  def remaining(self) -> tuple[float | None, bool]:
    """(seconds left in the whole run, whether it is a lower bound): the sum over the phases
    left, a group of phases that run together (`run_together`) counted by its longest."""
    groups = {p.key: (p.key,) for p in self.phases.values()}
    for keys in self._together:
      for k in keys:
        groups[k] = tuple(sorted(keys))
    total, lower = 0.0, False
    for group in set(groups.values()):
      longest = 0.0
      for k in group:
        p = self.phases.get(k)
        if p is None or p.finished:
          continue
        seconds, bound = p.remaining()
        if seconds is None:
          return None, True
        longest, lower = max(longest, seconds), lower or bound
      total += longest
    return total, lower

  def warn_if_long(self) -> None:
    """Once: a warning if this CPU run's estimate exceeds `CPU_WARNING_SECONDS`."""
    seconds, lower = self.remaining()
    if self._warned or self.backend != "cpu" or seconds is None or seconds < CPU_WARNING_SECONDS:
      return
    self._warned = True
    logging.warning(
      "This run needs %s%s on this CPU: the config is sized for accelerators. See "
      "docs/scaling.md for running it on GPUs or TPUs, or shrink its counts (e.g. "
      "--config.student.steps, --config.teacher.steps, --config.prompts.num_oracle). "
      "Continuing.",
      "at least " if lower else "",
      duration(seconds),
    )

  def phase(
    self, key: str, title: str | None = None, work: list[Work] | None = None, lines: bool = True
  ) -> Phase:
    """This run's phase `key` (started), or a stand-alone phase of `work` if the run has none
    of that key (it times and logs itself alone)."""
    found = self.phases.get(key) or Phase(key, title or key, list(work or ()), lines)
    found.start()
    return found


def matmul_flops_per_second(size: int = 1024, repeats: int = 8) -> float:
  """FLOP/s of a float32 [size, size] matrix product on the default device, the fastest of
  `repeats` timed products (about 0.3 s on a CPU): the rate behind the lower-bound estimates,
  before anything is timed. The fastest, not the mean: a bound prices every FLOP at the best
  rate the device reaches, and on a shared machine the fastest of several products is the
  steadiest reading (a mean moves with whatever else runs)."""
  x = jnp.ones((size, size), jnp.float32)
  product = jax.jit(lambda a: a @ a)
  product(x).block_until_ready()
  fastest = float("inf")
  for _ in range(repeats):
    start = _now()
    product(x).block_until_ready()
    fastest = min(fastest, _now() - start)
  return 2.0 * size**3 / max(fastest, 1e-9)
