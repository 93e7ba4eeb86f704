"""Several training steps per dispatch: one compiled program runs up to K steps in a loop.

At small shapes a step is a handful of small matmuls, and the time goes to dispatching the
program, moving each batch to the devices and the host's bookkeeping as much as to arithmetic.
`repeat_steps` runs a step function `count` times (a traced `count <= K`) over a stack of K
batches inside one program, so one dispatch and one transfer serve K steps. The loop's body is
the step itself: on XLA:CPU the parameters and metrics it gives are bit for bit those of the
step run alone in `tests/training/test_dispatch.py` and in the default study at 8 steps per
dispatch (docs/benchmarks.md), but a loop of one step of the real distillation step is fused
differently and differs in the last bits (about 1e-7 relative), so the trainer runs K = 1 with
the single step's own program.

Which steps go together is `DispatchPlan`'s: a dispatch starts at every multiple of K and at
every step where something must happen at the top of a step (an evaluation, a checkpoint, a
batch that must be drawn with the student's parameters of that step); it covers the steps up to
the next such step. The plan depends only on the config, never on where a run resumed, so a
resumed run dispatches the same steps together as an uninterrupted one.

`steps_per_dispatch(0, flops, platform)` chooses K: 1 on a CPU, where the host dispatches the
next step while the devices' threads still run the last one, so a dispatch costs nothing
measurable even at the default study's shapes (docs/benchmarks.md: `bench/dispatch.py`, one
per dispatch against 8 per dispatch, x0.96); elsewhere as many steps as make up
`DISPATCH_FLOPS`, a power of two between 1 and `MAX_STEPS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from th_distill.data.batch import Batch

# The work one dispatch should hold when K is chosen automatically on an accelerator: about 1 ms
# of an H100's dense bfloat16 matmuls, far more than a dispatch costs (tens of microseconds).
DISPATCH_FLOPS = 1e12
MAX_STEPS = 64


def steps_per_dispatch(configured: int, step_flops: float, platform: str) -> int:
  """K: `configured` if > 0; else 1 on `platform` 'cpu', elsewhere the power of two nearest
  below DISPATCH_FLOPS / `step_flops`, between 1 and MAX_STEPS (1 for any step of
  DISPATCH_FLOPS or more)."""
  if configured > 0:
    return configured
  if platform == "cpu":
    return 1
  steps = int(DISPATCH_FLOPS // max(step_flops, 1.0))
  return max(1, min(MAX_STEPS, 1 << max(steps.bit_length() - 1, 0)))


@dataclasses.dataclass(frozen=True)
class DispatchPlan:
  """Which steps of [0, `end`) one dispatch runs: from a step `first`, the steps up to (not
  including) the next multiple of `size`, the next step where `starts_at(step)` is true, or
  `end`, whichever comes first. `starts_at` marks the steps that must begin a dispatch."""

  size: int
  end: int
  starts_at: Callable[[int], bool]

  def count(self, first: int) -> int:
    """Steps of the dispatch that begins at `first` (>= 1)."""
    count = 1
    while count < self.size and first + count < self.end:
      step = first + count
      if step % self.size == 0 or self.starts_at(step):
        break
      count += 1
    return count


def stack_batches(batches: Sequence[Batch], size: int) -> Batch:
  """The `len(batches)` batches stacked along a new leading axis and padded to `size` with
  copies of the last one (never trained on: `repeat_steps` stops at `count`): [size, B, ...].
  Host arrays stay numpy (one transfer for the stack), device arrays are stacked on device."""
  padded = list(batches) + [batches[-1]] * (size - len(batches))

  def stack(*leaves):
    if any(isinstance(leaf, jax.Array) for leaf in leaves):
      return jnp.stack(leaves)
    return np.stack(leaves)

  return jax.tree_util.tree_map(stack, *padded)


def repeat_steps(
  step_fn: Callable[..., tuple[Any, dict[str, jax.Array]]],
  state: Any,
  frozen: tuple,
  batches: Batch,
  rng: jax.Array,
  first: jax.Array,
  count: jax.Array,
) -> tuple[Any, dict[str, jax.Array]]:
  """Runs `step_fn(state, *frozen, batch, rng) -> (state, metrics)` for the steps `first` ..
  `first + count - 1` on the first `count` of the K stacked `batches` ([K, B, ...]), in order,
  inside the calling program; step t's key is `fold_in(rng, t)`, as a dispatch of one step
  gets. Returns the last state and the metrics stacked [K] (rows >= `count` are zeros)."""
  size = jax.tree_util.tree_leaves(batches)[0].shape[0]

  def take(tree, i):
    return jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, i, 0, False), tree)

  def key(i):
    return jax.random.fold_in(rng, (first + i).astype(jnp.uint32))

  shapes = jax.eval_shape(
    lambda s, b, k: step_fn(s, *frozen, b, k)[1], state, take(batches, 0), key(0)
  )
  metrics = jax.tree_util.tree_map(lambda s: jnp.zeros((size, *s.shape), s.dtype), shapes)

  def body(i, carry):
    state, metrics = carry
    state, step_metrics = step_fn(state, *frozen, take(batches, i), key(i))
    metrics = jax.tree_util.tree_map(
      lambda all_, one: jax.lax.dynamic_update_index_in_dim(all_, one, i, 0), metrics, step_metrics
    )
    return state, metrics

  return jax.lax.fori_loop(0, count, body, (state, metrics))
