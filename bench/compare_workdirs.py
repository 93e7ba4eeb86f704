"""Compares every logged number of two th_distill workdirs, timings left out.

  python bench/compare_workdirs.py WORKDIR_A WORKDIR_B

Walks every JSON and JSONL file of A (metrics rows, summary.json, stage-1 info.json, markers;
not config.json, checkpoints or TensorBoard files) and the same file of B, and prints how many
numbers were compared, every difference and every field or file present on one side only. Keys
under `time/` and `throughput/`, `seconds` and `finished_at` are skipped: wall-clock times differ between runs.
Used to check that a refactor leaves a run's results unchanged (docs/benchmarks.md).
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Any

UNTIMED = ("time/", "throughput/")
CLOCK_KEYS = ("seconds", "finished_at")  # a stage's duration and when it finished


def _load(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    if path.endswith(".jsonl"):
      return [json.loads(line) for line in f]
    return json.load(f)


def _walk(a: Any, b: Any, where: str, found: dict[str, Any]) -> None:
  if isinstance(a, dict) and isinstance(b, dict):
    for key in sorted(set(a) | set(b)):
      if key.startswith(UNTIMED) or key in CLOCK_KEYS:
        continue
      if key not in a or key not in b:
        found["one_side"].append(f"{where}/{key}")
      else:
        _walk(a[key], b[key], f"{where}/{key}", found)
  elif isinstance(a, list) and isinstance(b, list):
    if len(a) != len(b):
      found["one_side"].append(f"{where}: {len(a)} vs {len(b)} items")
    for i, (x, y) in enumerate(zip(a, b)):
      _walk(x, y, f"{where}[{i}]", found)
  else:
    found["compared"] += 1
    if a != b:
      found["differ"].append((where, a, b))


def compare(first: str, second: str) -> dict[str, Any]:
  """{'compared': count, 'differ': [(where, a, b)], 'one_side': [where], 'files': count}."""
  found: dict[str, Any] = {"compared": 0, "differ": [], "one_side": [], "files": 0}
  for path in sorted(glob.glob(os.path.join(first, "**", "*.json*"), recursive=True)):
    name = os.path.relpath(path, first)
    if name == "config.json" or any(part in name for part in ("checkpoints", "tensorboard")):
      continue
    found["files"] += 1
    other = os.path.join(second, name)
    if os.path.exists(other):
      _walk(_load(path), _load(other), name, found)
    else:
      found["one_side"].append(f"file {name}")
  return found


def main() -> None:
  found = compare(*sys.argv[1:3])
  print(
    f"{found['compared']} numbers compared in {found['files']} files; {len(found['differ'])} differ"
  )
  for where, a, b in found["differ"]:
    print(f"  {where}: {a!r} vs {b!r}")
  for where in found["one_side"]:
    print(f"  on one side only: {where}")


if __name__ == "__main__":
  main()
