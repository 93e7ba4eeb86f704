"""Running sums of the logged training metrics since the last logged row, on the devices.

Part of the checkpointed carry of the training loop (th_distill.training.trainer), so a resumed
run logs exactly what an uninterrupted one would. A step whose loss or gradient norm is not
finite (skipped under `on_nonfinite = 'skip'`) is left out of the sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from th_distill.partitioning import Partitioner

STEPS = "steps"  # the count of summed steps, beside the metrics


def _empty_sums(names: tuple[str, ...]) -> dict[str, jax.Array]:
  return {name: jnp.zeros((), jnp.float32) for name in names}


def _add_step(sums: dict[str, jax.Array], metrics: dict[str, jax.Array]) -> dict[str, jax.Array]:
  counted = jnp.isfinite(metrics["train/loss"]) & jnp.isfinite(metrics["train/grad_norm"])
  return {
    name: total + jnp.where(counted, 1.0 if name == STEPS else metrics[name], 0.0)
    for name, total in sums.items()
  }


def _add_steps(
  sums: dict[str, jax.Array], metrics: dict[str, jax.Array], count: jax.Array
) -> dict[str, jax.Array]:
  """`_add_step` for the first `count` rows of metrics stacked [K], in order."""

  def body(i, sums):
    return _add_step(sums, {name: value[i] for name, value in metrics.items()})

  return jax.lax.fori_loop(0, count, body, sums)


class MetricSums:
  """Sums of `metrics` (names of the step's metrics, `train/loss` and `train/grad_norm` among
  them) and `steps`, as replicated device scalars. `empty()` -> {name: 0}; `add(sums,
  metrics)` -> sums with one step's metrics added; `add_steps(sums, metrics, count)` -> sums
  with the first `count` steps of metrics stacked [K] added in order (the same sums); compiled
  once, for the mesh."""

  def __init__(self, partitioner: Partitioner, metrics: tuple[str, ...]):
    self.names = tuple(metrics) + (STEPS,)
    replicated = partitioner.replicated
    self.empty = partitioner.jit(
      _empty_sums, in_shardings=(), out_shardings=replicated, static=(self.names,)
    )
    self.add = partitioner.jit(
      _add_step, in_shardings=(replicated, replicated), out_shardings=replicated
    )
    self.add_steps = partitioner.jit(
      _add_steps, in_shardings=(replicated,) * 3, out_shardings=replicated
    )

  @staticmethod
  def row(sums: dict[str, jax.Array], seconds: float) -> dict[str, float]:
    """The logged means of the summed steps, the tokens they trained on and their throughput
    over `seconds` of wall time; {} if no step was summed (the row of step 0)."""
    count = float(sums[STEPS])
    if not count:
      return {}
    row = {
      name: float(value) / count
      for name, value in sums.items()
      if name not in (STEPS, "train/tokens")
    }
    tokens = float(sums["train/tokens"])
    row.update(
      {
        "train/tokens": tokens,
        "time/steps_s": seconds,
        "throughput/train_tokens_per_s": tokens / max(seconds, 1e-9),
      }
    )
    return row
