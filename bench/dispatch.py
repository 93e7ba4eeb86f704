"""Steps per dispatch and cached references, side by side at the default study's shapes.

  python bench/dispatch.py [--steps-per-dispatch 8] [--repeats 5]

In one process, timed in turns: (1) the default config's distillation step (student, teacher and
oracle of configs/tiny.py, batch 32 x 8 prompt x 16 response tokens) dispatched one step per call
against K steps in one call (`th_distill.training.dispatch.repeat_steps`, the program the trainer
runs), per step, the batches already on the device; (2) one evaluation of a fixed set of 512 rows
by the full evaluator (student, teacher and oracle forwards) against `Programs.set_evaluator`
(the references' logits kept from the first call: the student alone). Both pairs compute the
same numbers (tests/training/test_dispatch.py); this measures what they cost.
"""

from __future__ import annotations

import argparse
import os
import sys

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import interleaved_medians  # noqa: E402
from th_distill.config import base_config  # noqa: E402
from th_distill.config.run_config import RunConfig  # noqa: E402
from th_distill.data.batch import BATCH_ARRAYS, Batch  # noqa: E402
from th_distill.models import init_params  # noqa: E402
from th_distill.partitioning import Partitioner, make_mesh  # noqa: E402
from th_distill.training import dispatch, program_builders, programs  # noqa: E402


def _batch(rows: int, config: RunConfig, seed: int) -> Batch:
  rng, task = np.random.default_rng(seed), config.task
  return Batch(
    prompts=rng.integers(2, task.vocab_size, (rows, task.prompt_length)).astype(np.int32),
    prompt_mask=np.ones((rows, task.prompt_length), bool),
    responses=rng.integers(2, task.vocab_size, (rows, task.response_length)).astype(np.int32),
    mask=np.ones((rows, task.response_length), np.float32),
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps-per-dispatch", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  k = args.steps_per_dispatch

  config = RunConfig.from_config(base_config())
  models = program_builders.Models.from_config(config)
  partitioner = Partitioner(make_mesh())
  built = programs.Programs(models, config.program_settings, partitioner)
  student, teacher, oracle = (
    nn.unbox(init_params(getattr(models, name), jax.random.PRNGKey(i)))
    for i, name in enumerate(("student", "teacher", "oracle"))
  )
  optimizer = config.distill.optimizer.build()
  one, many = (
    program_builders.distill_program(models, config.distill, partitioner, dispatched)
    for dispatched in (False, True)
  )
  batch = partitioner.shard_batch(_batch(config.student.batch_size, config, 0))
  stack = partitioner.shard_batch(dispatch.stack_batches([batch] * k, k), axis=1)
  rng = jax.random.PRNGKey(0)
  states = {
    name: program_builders.new_train_state(partitioner, models.student, student, optimizer)
    for name in ("one", "many")
  }

  def one_by_one():
    state = states["one"]
    for step in range(k):
      state, _ = one(state, teacher, oracle, batch, jax.random.fold_in(rng, step))
    states["one"] = jax.block_until_ready(state)

  def in_one_call():
    state, _ = many(states["many"], teacher, oracle, stack, rng, 0, k)
    states["many"] = jax.block_until_ready(state)

  data = {k_: getattr(_batch(512, config, 1), k_) for k_ in BATCH_ARRAYS}
  full, cached = built.evaluator("student"), built.set_evaluator("student", teacher, oracle, data)
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, load {os.getloadavg()[0]:.2f}")
  steps = interleaved_medians({"one": one_by_one, "many": in_one_call}, args.repeats, warmup=2)
  evals = interleaved_medians(
    {
      "full": lambda: full(student, teacher, oracle, data, "set"),
      "cached": lambda: cached(student, "set"),
    },
    args.repeats,
    warmup=2,
  )
  print(
    f"distillation step: {steps['one'] / k * 1e3:.2f} ms one per dispatch, "
    f"{steps['many'] / k * 1e3:.2f} ms {k} per dispatch: x{steps['one'] / steps['many']:.2f}"
  )
  print(
    f"evaluation of 512 fixed rows: {evals['full'] * 1e3:.0f} ms full, "
    f"{evals['cached'] * 1e3:.0f} ms against cached references: "
    f"x{evals['full'] / evals['cached']:.2f}"
  )
  print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
  main()
