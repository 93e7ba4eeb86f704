"""A compiled program's measures: XLA's memory analysis and FLOP count, the collectives of its
compiled HLO (count and bytes per kind) and XLA's full-rematerialisation warnings
(`compile_program` -> `ProgramPlan`), for `th_distill.planning.plan`."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
# An HLO instruction whose op is a collective: `%name = SHAPE op(` or `op-start(`.
_COLLECTIVE = re.compile(r"= (?P<shape>.+?) (?P<op>" + "|".join(COLLECTIVES) + r")(-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")
# XLA's warning when its SPMD partitioner must replicate a whole tensor to reshard it.
FULL_REMAT = "Involuntary full rematerialization"
_DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "bf16": 2,
  "f16": 2,
  "s16": 2,
  "u16": 2,
  "f32": 4,
  "s32": 4,
  "u32": 4,
  "f64": 8,
  "s64": 8,
  "u64": 8,
  "c64": 8,
  "c128": 16,
}


@dataclasses.dataclass(frozen=True)
class ProgramPlan:
  """One compiled program: per-device bytes and FLOPs, and its collectives.

  `collectives`: {kind: (count, bytes)} of the collective instructions in the compiled HLO, bytes
  being the size of their results on one device; an instruction inside a loop body counts once.
  `xla_flops`: XLA's cost analysis (loop bodies counted once, element-wise work included);
  `model_flops`: `th_distill.planning.flops` of the whole program divided by the devices.
  `full_remats`: XLA's "involuntary full rematerialization" warnings while partitioning (a
  tensor replicated whole on every device to change its sharding).
  """

  name: str
  rows: int  # global batch rows of the program's arguments
  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs that reuse donated arguments
  temp_bytes: int
  xla_flops: float
  model_flops: float
  collectives: dict[str, tuple[int, int]]
  full_remats: int
  compile_s: float

  @property
  def total_bytes(self) -> int:
    """Peak bytes per device: arguments + outputs - aliased outputs + temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def collectives(hlo_text: str) -> dict[str, tuple[int, int]]:
  """{kind: (count, bytes)} of the collective instructions of compiled HLO text, bytes being the
  size of each instruction's result (the last array of an async `-start` tuple)."""
  found = {kind: [0, 0] for kind in COLLECTIVES}
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if not match:
      continue
    arrays = [(a["dtype"], a["dims"]) for a in _ARRAY.finditer(match["shape"])]
    if match.group(3):  # async start: (operands..., results...) -> the result
      arrays = arrays[-1:]
    size = sum(
      _DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
      for dtype, dims in arrays
    )
    found[match["op"]][0] += 1
    found[match["op"]][1] += size
  return {kind: (count, size) for kind, (count, size) in found.items()}


@contextlib.contextmanager
def _native_stderr(lines: list[str]) -> Iterator[None]:
  """Collects what is written on file descriptor 2 (XLA's C++ warnings too) into `lines`."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      lines.extend(capture.read().decode(errors="replace").splitlines())


def compile_program(
  name: str, program: Callable, args: tuple, rows: int, total_flops: float, devices: int
) -> ProgramPlan:
  """Lowers and compiles `program` for `args` and reads XLA's analyses; XLA's warnings other
  than full rematerialisations (counted) are passed on to stderr."""
  start = time.time()
  warnings: list[str] = []
  with _native_stderr(warnings):
    compiled = program.lower(*args).compile()
  seconds = time.time() - start
  remats = sum(FULL_REMAT in line for line in warnings)
  for line in warnings:
    if FULL_REMAT not in line:
      print(line, file=sys.stderr)
  stats = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return ProgramPlan(
    name=name,
    rows=rows,
    argument_bytes=stats.argument_size_in_bytes,
    output_bytes=stats.output_size_in_bytes,
    alias_bytes=stats.alias_size_in_bytes,
    temp_bytes=stats.temp_size_in_bytes,
    xla_flops=float(cost.get("flops", 0.0)),
    model_flops=total_flops / devices,
    collectives=collectives(compiled.as_text()),
    full_remats=remats,
    compile_s=seconds,
  )


def _size(n: float) -> str:
  """Bytes with binary units."""
  for unit, scale in (("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
    if abs(n) >= scale:
      return f"{n / scale:.2f} {unit}"
  return f"{n:.0f} B"


def _collective_text(found: dict[str, tuple[int, int]]) -> str:
  parts = [f"{kind} {count} ({_size(size)})" for kind, (count, size) in found.items() if count]
  return ", ".join(parts) or "none"


HEADER = (
  "| program | rows | arguments | outputs | temporaries | total | XLA TFLOP | th_distill "
  "TFLOP | collectives: count (bytes) | full remats | compile s |\n|" + "---|" * 11
)


def format_row(p: ProgramPlan) -> str:
  """One markdown row of `HEADER`: per-device bytes and TFLOPs."""
  return (
    f"| {p.name} | {p.rows} | {_size(p.argument_bytes)} | {_size(p.output_bytes)} | "
    f"{_size(p.temp_bytes)} | {_size(p.total_bytes)} | {p.xla_flops / 1e12:.3f} | "
    f"{p.model_flops / 1e12:.3f} | {_collective_text(p.collectives)} | {p.full_remats} | "
    f"{p.compile_s:.0f} |"
  )
