"""One training loop for every stage: a compiled step over a batch source, behaviours attached.

`Trainer` steps `step_fn(state, batch, rng) -> (state, metrics)` over `batch_at(step, params)`
from its latest checkpoint (or step 0) to `steps`, or, given `steps_fn` and
`steps_per_dispatch` K > 1, runs up to K steps per call of `steps_fn(state, batches [K, B,
...], rng, first, count) -> (state, metrics [K])` (th_distill.training.dispatch: the steps
of a dispatch are fixed by the config, and `needs_params_at(step)` marks the steps whose batch
must be drawn with that step's parameters, which begin a dispatch). It owns what every loop
needs:

- the checkpointed carry (the train state, with `summed` names the running sums of the
  logged training metrics, `MetricSums`, and with `carried` what the batch source must carry,
  e.g. batches it sampled ahead), saved every `checkpoint_every` steps and at the end;
- pre-emption: a SIGTERM (or a pod's notice) checkpoints and raises `Preempted` at the same step
  on every process;
- the non-finite guard (`guards.StepWatch`), which reads each dispatch's metrics one dispatch
  late (after the next one is dispatched), so the devices never wait for the host, and names the
  step; a poisoned state is never saved.

Everything else is a `Hook` attached with `add_hook`: evaluation and metric writing, the hacking
detector (an action that may stop the run: `request_stop`), progress lines. A hook's
`before_step(trainer, step)` runs at the top of each dispatch, whose first step is `step` (after
the pre-emption check, before its batches: it sees the parameters after `step` steps); a step
where a hook must act begins a dispatch when its `starts_dispatch(step)` says so.
`after_steps(trainer, first, count)` runs once steps first .. first + count - 1 are dispatched,
`close` when the loop ends (also on pre-emption).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from th_distill import errors
from th_distill.data.batch import Batch
from th_distill.partitioning import Partitioner
from th_distill.rundir.checkpoints import RunCheckpointer
from th_distill.rundir.preemption import Preempted, PreemptionWatch
from th_distill.training.dispatch import DispatchPlan, stack_batches
from th_distill.training.guards import StepWatch
from th_distill.training.metric_sums import MetricSums
from th_distill.training.steps import TrainState

# step_fn(state, batch, rng) -> (state, metrics): one compiled training step (state donated).
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
# steps_fn(state, batches [K, B, ...], rng, first, count) -> (state, metrics stacked [K]):
# steps first .. first + count - 1 in one compiled program (dispatch.repeat_steps).
StepsFn = Callable[
  [TrainState, Batch, jax.Array, int, int], tuple[TrainState, dict[str, jax.Array]]
]
# batch_at(step, params) -> the batch of `step` (host or device arrays).
BatchAt = Callable[[int, Any], Batch]


class CarriedState(Protocol):
  """What a batch source carries across checkpoints (`BatchSource.state` / `load_state`)."""

  def state(self, step: int) -> Any | None:
    """A pytree of arrays of a fixed structure for a checkpoint at `step`, or None."""

  def load_state(self, state: Any) -> None:
    """Takes back a restored `state(0)`-shaped pytree."""


class Hook:
  """A behaviour attached to a `Trainer` (override what it needs; see the module docstring)."""

  def starts_dispatch(self, step: int) -> bool:
    """Whether `before_step` must see the top of step `step` (a dispatch begins there)."""
    del step
    return False

  def before_step(self, trainer: Trainer, step: int) -> None:
    """At the top of a dispatch whose first step is `step`, before its batches."""

  def after_steps(self, trainer: Trainer, first: int, count: int) -> None:
    """Once steps first .. first + count - 1 are dispatched (`trainer.last_metrics` are the
    last one's device metrics)."""

  def close(self, trainer: Trainer, step: int) -> None:
    """When the loop ends at `step` (finished, stopped or pre-empted)."""


class Trainer:
  """The loop (see the module docstring). `name` titles its errors; `state` is the fresh train
  state (replaced by the latest checkpoint in `checkpoint_dir`, if any); `rng` is folded with
  each step; `summed`: the metric names whose running sums the carry holds (for `MetricSums`
  rows), or () for none; `last`: metric names whose values at the last step the carry holds
  (so `last_metrics` survives a resume at the final step), or () for none; `carried`: the
  batch source's state to checkpoint with the carry (nothing when its `state(0)` is None);
  `steps_fn`, `steps_per_dispatch`, `needs_params_at`: several steps per dispatch (see the
  module docstring; without `needs_params_at` every step's batch needs its own parameters, so
  each dispatch runs one step)."""

  def __init__(
    self,
    name: str,
    step_fn: StepFn,
    batch_at: BatchAt,
    state: TrainState,
    *,
    partitioner: Partitioner,
    checkpoint_dir: str,
    steps: int,
    checkpoint_every: int,
    rng: jax.Array,
    guard: StepWatch,
    summed: tuple[str, ...] = (),
    last: tuple[str, ...] = (),
    carried: CarriedState | None = None,
    steps_fn: StepsFn | None = None,
    steps_per_dispatch: int = 1,
    needs_params_at: Callable[[int], bool] | None = None,
  ):
    self.name, self.step_fn, self.batch_at = name, step_fn, batch_at
    self.steps_fn = steps_fn if steps_per_dispatch > 1 else None
    self.needs_params_at = needs_params_at or (lambda step: True)
    self.plan = DispatchPlan(
      steps_per_dispatch if self.steps_fn else 1, steps, starts_at=self._starts_dispatch
    )
    self.partitioner, self.steps, self.checkpoint_every = partitioner, steps, checkpoint_every
    self.rng, self.guard = rng, guard
    self.sums = MetricSums(partitioner, summed) if summed else None
    carry = {"state": state}
    if self.sums:
      carry["metric_sums"] = self.sums.empty()
    self.last = tuple(last)
    if self.last:
      zero = jnp.zeros((), jnp.float32)
      carry["last_metrics"] = jax.device_put({n: zero for n in self.last}, partitioner.replicated)
    initial = carried.state(0) if carried is not None else None
    self.carried = carried if initial is not None else None
    if self.carried:
      carry["source"] = initial
    self.checkpointer = RunCheckpointer(checkpoint_dir)
    self.carry = self.checkpointer.restore_latest(carry) or carry
    if self.carried:
      self.carried.load_state(self.carry["source"])
    self.start_step = int(self.carry["state"].step)
    self.hooks: list[Hook] = []
    # The last dispatch's metrics and, if stacked, the row of its last step.
    self._last: tuple[dict[str, jax.Array], int | None] = (
      dict(self.carry.get("last_metrics", {})),
      None,
    )
    self.stop_reason: str | None = None
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []
    self._logged = False  # whether the carry's sums were logged (they restart next step)
    self._step_seconds, self._since = 0.0, time.time()
    self._paused_at = self._since

  @property
  def params(self) -> Any:
    return self.carry["state"].params

  @property
  def last_metrics(self) -> dict[str, jax.Array]:
    """The device metrics of the last step dispatched (of the restored carry before any)."""
    metrics, row = self._last
    return metrics if row is None else {name: value[row] for name, value in metrics.items()}

  def _starts_dispatch(self, step: int) -> bool:
    return (
      step % self.checkpoint_every == 0
      or self.needs_params_at(step)
      or any(hook.starts_dispatch(step) for hook in self.hooks)
    )

  def replace_params(self, params: Any) -> None:
    """Continues from `params` (same structure and shardings; the optimizer state and the step
    stay), e.g. a hook rolling the run back to parameters it kept. Call from `before_step`."""
    self.settle()
    self.carry["state"] = self.carry["state"].replace(params=params)

  def add_hook(self, hook: Hook) -> Trainer:
    self.hooks.append(hook)
    return self

  def request_stop(self, reason: str) -> None:
    """Ends the loop before the next step's batch (a hook's action)."""
    self.stop_reason = reason

  def run(self) -> int:
    """Trains to `steps` (or a requested stop); returns the last step. Raises Preempted after
    checkpointing on pre-emption, guards.NonFiniteStep from the guard, NoSpace (one line: the
    step, the last complete checkpoint) if a checkpoint or row cannot be written for lack of
    space, the unfinished checkpoint removed."""
    try:
      return self._run()
    except Exception as e:  # pylint: disable=broad-except  (Orbax wraps the OSError)
      space = errors.space_error(e)
      if space is None:
        raise
      checkpointer = self.checkpointer
      unfinished, last = checkpointer.unfinished_step(), checkpointer.last_complete_step()
      checkpointer.discard_unfinished()
      writing = (
        None if unfinished is None else f"checkpoint {unfinished} in {checkpointer.directory}"
      )
      raise errors.no_space(
        space,
        writing,
        f" at step {self.at_step if unfinished is None else unfinished}; the last complete "
        "checkpoint is " + (f"step {last}" if last is not None else "none (a rerun starts from 0)"),
      ) from e

  def _run(self) -> int:
    step = self.at_step = self.start_step
    with PreemptionWatch() as preemption:
      # `tick` counts the dispatches, so every process asks at the same calls.
      for tick in itertools.count():
        self.at_step = step
        # Checked before the hooks, so a resumed run re-logs this step's row identically.
        if preemption.reached(tick) and step > self.start_step:
          self.close(step)
          raise Preempted(self.name, step)
        for hook in self.hooks:
          hook.before_step(self, step)
        if step == self.steps or self.stop_reason:
          break
        count = self.plan.count(step)
        self._train(step, count)
        for hook in self.hooks:
          hook.after_steps(self, step, count)
        step += count
        if step % self.checkpoint_every == 0:
          self.save(step)
    self.close(step)
    return step

  def _train(self, first: int, count: int) -> None:
    """Dispatches steps first .. first + count - 1, then checks the previous dispatch."""
    state, params = self.carry["state"], self.params
    if self.steps_fn is None:
      batch = self.partitioner.shard_batch(self.batch_at(first, params))
      state, metrics = self.step_fn(state, batch, jax.random.fold_in(self.rng, first))
      last = None
    else:
      stack = stack_batches(
        [self.batch_at(step, params) for step in range(first, first + count)], self.plan.size
      )
      stacked = self.partitioner.shard_batch(stack, axis=1)
      state, metrics = self.steps_fn(state, stacked, self.rng, first, count)
      last = count - 1
    self.settle()
    self._pending.append((first, count, last is not None, metrics))
    carry = {"state": state}
    if self.sums:
      sums = self.sums.empty() if self._logged else self.carry["metric_sums"]
      if last is None:
        carry["metric_sums"] = self.sums.add(sums, metrics)
      else:
        carry["metric_sums"] = self.sums.add_steps(sums, metrics, count)
    self.carry, self._logged, self._last = carry, False, (metrics, last)
    if self.last:
      carry["last_metrics"] = {n: self.last_metrics[n] for n in self.last}

  def settle(self) -> None:
    """Runs the guard on the steps whose metrics are pending (raises NonFiniteStep)."""
    while self._pending:
      first, count, stacked, metrics = self._pending.pop()
      if stacked:
        self.guard.check_steps(first, count, metrics, self.checkpointer)
      else:
        self.guard.check(first, metrics, self.checkpointer)

  def pause(self) -> None:
    """Waits for the dispatched steps (so timers cover finished steps), e.g. before an
    evaluation; `resume` restarts the step clock."""
    jax.block_until_ready(self.carry)
    self.settle()
    self._paused_at = time.time()
    self._step_seconds += self._paused_at - self._since

  def resume(self) -> None:
    self._since = time.time()

  def training_means(self) -> dict[str, float]:
    """The means of the summed metrics since the last call, their tokens, throughput and the
    time since `pause` (`time/eval_s`); {} if no step was summed (the row of step 0). Call
    after `pause`. The sums restart at the next step; until then the carry (a checkpoint taken
    now) keeps them, so a run resumed here gives this row again identically."""
    if not self.sums:
      return {}
    means = MetricSums.row(self.carry["metric_sums"], self._step_seconds)
    if means:
      means["time/eval_s"] = time.time() - self._paused_at
      self._logged, self._step_seconds = True, 0.0
    return means

  def save(self, step: int) -> None:
    self.settle()  # a poisoned state is never saved
    if self.carried:
      self.carry["source"] = self.carried.state(step)
    self.checkpointer.save(step, self.carry)

  def close(self, step: int) -> None:
    """Saves the carry at `step`, waits for the saves and closes the hooks."""
    self.save(step)
    self.checkpointer.close()
    for hook in self.hooks:
      hook.close(self, step)
