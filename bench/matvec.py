"""The rate (GB/s of weights read) of the 8-row matrix products a T5-small decoding step is made
of, in XLA (`dot`, and multiply-and-reduce) and in torch, beside the streaming read rate of a
jitted sum: the evidence behind the sampler's roofline in docs/benchmarks.md.

  python bench/matvec.py [--repeats 5]

Cases (x is [8, 512] float32): the 24 distinct [512, 1024] / [1024, 512]-sized matrices of the
decoder's MLPs (48 MiB, more than the 32 MiB last-level cache), and the [512, 32128] output layer.
Each candidate is timed in turns (bench.common.interleaved_medians); torch uses 2 threads.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import interleaved_medians  # noqa: E402
from bench.op_profile import bandwidth_probe  # noqa: E402

ROWS, WIDTH = 8, 512
CASES = {"24 MLP matrices [512, 1024]": (24, 1024), "output layer [512, 32128]": (1, 32128)}


def candidates(count: int, columns: int) -> tuple[dict, int]:
  """Callables computing x @ w for each of `count` matrices [WIDTH, columns]; bytes they read."""
  weights = np.random.default_rng(0).standard_normal((count, WIDTH, columns), np.float32)
  x = np.ones((ROWS, WIDTH), np.float32)
  jw, jx = [jnp.asarray(w) for w in weights], jnp.asarray(x)
  tw, tx = [torch.from_numpy(w) for w in weights], torch.from_numpy(x)
  # One program, one product per matrix (as in a decoding step, where each is a parameter).
  dot = jax.jit(lambda x, ws: [x @ w for w in ws])
  reduce = jax.jit(lambda x, ws: [jnp.sum(x[:, :, None] * w[None], axis=1) for w in ws])
  return {
    "XLA dot": lambda: dot(jx, jw),
    "XLA multiply-reduce": lambda: reduce(jx, jw),
    "torch matmul": lambda: [tx @ w for w in tw],
  }, weights.nbytes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  print(
    f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
    f"load average {os.getloadavg()[0]:.2f}; GB/s of weights read"
  )
  for case, (count, columns) in CASES.items():
    fns, nbytes = candidates(count, columns)
    fns["jitted sum (512 MiB)"] = bandwidth_probe()
    seconds = interleaved_medians(fns, args.repeats, warmup=2)
    for name, s in seconds.items():
      size = 512 * 2**20 if name.startswith("jitted sum") else nbytes
      print(f"  {case:<30} {name:<22} {size / s / 1e9:6.1f} GB/s  {1e3 * s:8.2f} ms")


if __name__ == "__main__":
  main()
