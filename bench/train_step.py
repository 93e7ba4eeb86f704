"""Tokens/s and achieved FLOP/s of a distillation step, as a fraction of the matmul ceiling.

  python bench/train_step.py [--student small] [--teacher base] [--batch 8] [--input-length 128]
                             [--target-length 64]

The step is `th_distill.training.steps.distill_step` without an oracle: teacher forward, student forward
and backward, the forward-KL loss and the proxy metrics, Adam update. FLOPs come from the shapes
(th_distill/flops.py: 3 x student forward + teacher forward); the ceiling is a jitted 2048 x 2048
float32 matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import interleaved_medians, matmul_peak_flops  # noqa: E402
from th_distill.config.settings import make_optimizer  # noqa: E402
from th_distill.models import T5, init_params, t5_config  # noqa: E402
from th_distill.planning.flops import distill_flops  # noqa: E402
from th_distill.training.steps import Batch, create_train_state, make_distill_step  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--student", default="small")
  parser.add_argument("--teacher", default="base")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--input-length", type=int, default=128)
  parser.add_argument("--target-length", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", default="")
  args = parser.parse_args()

  student, teacher = T5(t5_config(args.student)), T5(t5_config(args.teacher))
  s_params = nn.unbox(init_params(student, jax.random.PRNGKey(0)))
  t_params = nn.unbox(init_params(teacher, jax.random.PRNGKey(1)))
  vocab = student.cfg.vocab_size
  batch = Batch(
    prompts=jax.random.randint(jax.random.PRNGKey(2), (args.batch, args.input_length), 2, vocab),
    prompt_mask=jnp.ones((args.batch, args.input_length), bool),
    responses=jax.random.randint(jax.random.PRNGKey(3), (args.batch, args.target_length), 2, vocab),
    mask=jnp.ones((args.batch, args.target_length), jnp.float32),
  )
  step = jax.jit(make_distill_step(student, teacher, None, "fkl"), donate_argnums=0)
  holder = {"state": create_train_state(s_params, make_optimizer(1e-4))}

  def run_step():
    holder["state"], metrics = step(holder["state"], t_params, None, batch, jax.random.PRNGKey(4))
    return metrics

  peak = matmul_peak_flops()
  seconds = interleaved_medians({"step": run_step}, args.repeats, warmup=2)["step"]
  flops = args.batch * distill_flops(
    student.cfg, teacher.cfg, args.input_length, args.target_length
  )
  result = {
    "seconds_per_step": seconds,
    "target_tokens_per_s": args.batch * args.target_length / seconds,
    "step_gflop": flops / 1e9,
    "achieved_gflops": flops / seconds / 1e9,
    "peak_matmul_gflops": peak / 1e9,
    "fraction_of_peak": flops / seconds / peak,
  }
  print(
    f"student {args.student} <- teacher {args.teacher}, batch {args.batch}, input "
    f"{args.input_length}, target {args.target_length}, {jax.devices()[0].platform}"
  )
  print(
    f"step {seconds * 1e3:.0f} ms | {result['target_tokens_per_s']:,.0f} target tok/s | "
    f"{result['step_gflop']:.1f} GFLOP/step | {result['achieved_gflops']:.1f} GFLOP/s | "
    f"matmul peak {result['peak_matmul_gflops']:.1f} GFLOP/s | "
    f"{100 * result['fraction_of_peak']:.0f}% of peak"
  )
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"args": vars(args), **result}, f, indent=2)


if __name__ == "__main__":
  main()
