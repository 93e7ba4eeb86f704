"""Generated tokens/s of the jitted KV-cache sampler vs the uncached baseline (full re-forward).

  python bench/sampler.py [--size tiny] [--batch 64] [--input-length 16] [--lengths 32 128 512]

Both samplers run in the same process, timed in turns; responses are forced to full length
(no stop ids). The cached sampler's cost per token should stay near flat in the length, the
uncached one grows linearly (quadratic total).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import flax.linen as nn
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import NEVER_STOP, interleaved_medians  # noqa: E402
from th_distill.models import T5, init_params, t5_config  # noqa: E402
from th_distill.sampling import sample, sample_uncached  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="tiny")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--input-length", type=int, default=16)
  parser.add_argument("--lengths", type=int, nargs="+", default=[32, 128, 512])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", default="")
  args = parser.parse_args()

  model = T5(t5_config(args.size))
  params = nn.unbox(init_params(model, jax.random.PRNGKey(0)))
  prompts = jax.random.randint(
    jax.random.PRNGKey(1), (args.batch, args.input_length), 2, model.cfg.vocab_size
  )
  mask = jax.numpy.ones(prompts.shape, bool)
  rows = []
  print(
    f"{args.size} T5, batch {args.batch}, input {args.input_length}, "
    f"{jax.devices()[0].platform}, medians of {args.repeats} (1 above length 128)"
  )
  print(
    f"{'length':>7} {'cached tok/s':>13} {'uncached tok/s':>15} {'ratio':>7} {'cached ms/step':>15}"
  )
  key = jax.random.PRNGKey(2)
  for length in args.lengths:
    kwargs = dict(max_length=length, tokens=NEVER_STOP)
    # Compiled ahead of time, so no warm-up call is needed (the uncached one at 512 takes minutes).
    cached = sample.lower(model, params, prompts, mask, key, **kwargs).compile()
    uncached = sample_uncached.lower(model, params, prompts, mask, key, **kwargs).compile()
    repeats = args.repeats if length <= 128 else 1
    seconds = interleaved_medians(
      {
        "cached": lambda: cached(params, prompts, mask, key),  # noqa: B023 (timed in this iteration)
        "uncached": lambda: uncached(params, prompts, mask, key),  # noqa: B023
      },
      repeats,
      warmup=0,
    )
    tokens = args.batch * length
    row = {
      "length": length,
      "cached_tokens_per_s": tokens / seconds["cached"],
      "uncached_tokens_per_s": tokens / seconds["uncached"],
      "ratio": seconds["uncached"] / seconds["cached"],
    }
    rows.append(row)
    print(
      f"{length:>7} {row['cached_tokens_per_s']:>13,.0f} {row['uncached_tokens_per_s']:>15,.0f} "
      f"{row['ratio']:>6.1f}x {1e3 * seconds['cached'] / length:>15.3f}"
    )
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
