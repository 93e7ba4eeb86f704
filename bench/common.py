"""Timing helpers shared by the benchmarks: interleaved repeats, medians, the matmul ceiling."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


def time_call(fn: Callable[[], object]) -> float:
  """Seconds of one call of `fn`, waiting for its device results."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def interleaved_medians(
  candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
  """Median seconds per call of each candidate, timed in turns (A B A B ...) after `warmup`
  untimed calls each, so that machine noise hits every candidate alike."""
  for fn in candidates.values():
    for _ in range(warmup):
      time_call(fn)
  samples: dict[str, list[float]] = {name: [] for name in candidates}
  for _ in range(repeats):
    for name, fn in candidates.items():
      samples[name].append(time_call(fn))
  return {name: statistics.median(values) for name, values in samples.items()}


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
  """FLOP/s of a jitted float32 [size, size] x [size, size] matmul: this machine's yardstick."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  seconds = interleaved_medians({"matmul": lambda: matmul(a, b)}, repeats, warmup=2)["matmul"]
  return 2.0 * size**3 / seconds
