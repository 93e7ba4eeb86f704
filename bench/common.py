"""Helpers shared by the benchmarks: interleaved repeats and medians, the matmul ceiling, and the
sampler's memory roofline (the bytes a decoding step reads, the streaming read rate)."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from th_distill.models.tokens import SpecialTokens
from th_distill.sampling import cache_segments

# The benchmarks time full-length responses: a sampler given these special tokens never stops.
NEVER_STOP = SpecialTokens(pad_id=0, stop_ids=())


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


def matmul_probe(size: int = 2048, dtype: Any = jnp.float32) -> tuple[Callable[[], Any], float]:
  """(a jitted [size, size] x [size, size] matmul of `dtype` on the default device at the
  default precision, its FLOPs), to time beside other candidates."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), dtype)
  matmul = jax.jit(jnp.matmul)
  return (lambda: matmul(a, b)), 2.0 * size**3


def matmul_peak_flops(size: int = 2048, repeats: int = 10, dtype: Any = jnp.float32) -> float:
  """FLOP/s of `matmul_probe(size, dtype)` (float32: this machine's yardstick)."""
  call, flops = matmul_probe(size, dtype)
  return flops / interleaved_medians({"matmul": call}, repeats, warmup=2)["matmul"]


def bandwidth_probe(mib: int = 512) -> tuple[Callable[[], Any], int]:
  """(a jitted sum over a float32 array of `mib` MiB on the default device, its bytes): the
  streaming read rate XLA reaches there is bytes / seconds per call."""
  data = jnp.ones((mib, 1024, 256), jnp.float32)
  total = jax.jit(jnp.sum)
  return (lambda: total(data)), mib * 2**20


def decode_step_bytes(cfg: Any, params: Any, batch: int, input_length: int, length: int) -> float:
  """Bytes one decoding step of a T5 sampler reads, averaged over the L = `length` steps: the
  decoder's weights except the cross-attention key/value projections (used once, at
  `init_cache`), the output layer, the cross-attention keys and values [B, Li] and the
  self-attention cache of the current segment (`cache_segments`), at the parameters' own dtypes
  and the compute dtype for the caches."""
  itemsize = jnp.dtype(cfg.compute_dtype).itemsize
  weights = sum(
    x.size * x.dtype.itemsize
    for path, x in jax.tree_util.tree_leaves_with_path(params)
    if re.search(r"decoder|logits_kernel", jax.tree_util.keystr(path))
    and not re.search(r"cross_attention.*'(key|value)'", jax.tree_util.keystr(path))
  )
  per_position = 2 * cfg.num_decoder_layers * batch * cfg.num_heads * cfg.d_kv * itemsize
  ends = cache_segments(length)
  starts = [0] + ends[:-1]
  cache_positions = sum((end - start) * end for start, end in zip(starts, ends)) / length
  return float(weights + per_position * (input_length + cache_positions))
