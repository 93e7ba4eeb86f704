"""One training loop for every stage: a compiled step over a batch source, behaviours attached.

`Trainer` steps `step_fn(state, batch, rng) -> (state, metrics)` over `batch_at(step, params)`
from its latest checkpoint (or step 0) to `steps`. It owns what every loop needs:

- the checkpointed carry (the train state, with `summed` names the running sums of the
  logged training metrics, `MetricSums`, and with `carried` what the batch source must carry,
  e.g. batches it sampled ahead), saved every `checkpoint_every` steps and at the end;
- pre-emption: a SIGTERM (or a pod's notice) checkpoints and raises `Preempted` at the same step
  on every process;
- the non-finite guard (`guards.StepWatch`), which reads each step's metrics one step late
  (after the next step is dispatched), so the devices never wait for the host; a poisoned state
  is never saved.

Everything else is a `Hook` attached with `add_hook`: evaluation and metric writing, the hacking
detector (an action that may stop the run: `request_stop`), progress lines. A hook's
`before_step(trainer, step)` runs at the top of step `step` (after the pre-emption check, before
its batch: it sees the parameters after `step` steps), `after_step` once step `step` is
dispatched, `close` when the loop ends (also on pre-emption).
"""

from __future__ import annotations

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
from th_distill.training.guards import StepWatch
from th_distill.training.metric_sums import MetricSums
from th_distill.training.steps import TrainState

# step_fn(state, batch, rng) -> (state, metrics): one compiled training step (state donated).
StepFn = Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
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

  def before_step(self, trainer: Trainer, step: int) -> None:
    """At the top of step `step`, before its batch."""

  def after_step(self, trainer: Trainer, step: int) -> None:
    """Once step `step` is dispatched (`trainer.last_metrics` are its device metrics)."""

  def close(self, trainer: Trainer, step: int) -> None:
    """When the loop ends at `step` (finished, stopped or pre-empted)."""


class Trainer:
  """The loop (see the module docstring). `name` titles its errors; `state` is the fresh train
  state (replaced by the latest checkpoint in `checkpoint_dir`, if any); `rng` is folded with
  each step; `summed`: the metric names whose running sums the carry holds (for `MetricSums`
  rows), or () for none; `last`: metric names whose values at the last step the carry holds
  (so `last_metrics` survives a resume at the final step), or () for none; `carried`: the
  batch source's state to checkpoint with the carry (nothing when its `state(0)` is None)."""

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
  ):
    self.name, self.step_fn, self.batch_at = name, step_fn, batch_at
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
    self.last_metrics: dict[str, jax.Array] = dict(self.carry.get("last_metrics", {}))
    self.stop_reason: str | None = None
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []
    self._logged = False  # whether the carry's sums were logged (they restart next step)
    self._step_seconds, self._since = 0.0, time.time()
    self._paused_at = self._since

  @property
  def params(self) -> Any:
    return self.carry["state"].params

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
      for step in range(self.start_step, self.steps + 1):
        self.at_step = step
        # Checked before the hooks, so a resumed run re-logs this step's row identically.
        if preemption.reached(step) and step > self.start_step:
          self.close(step)
          raise Preempted(self.name, step)
        for hook in self.hooks:
          hook.before_step(self, step)
        if step == self.steps or self.stop_reason:
          break
        self._train(step)
        for hook in self.hooks:
          hook.after_step(self, step)
        if (step + 1) % self.checkpoint_every == 0:
          self.save(step + 1)
    self.close(step)
    return step

  def _train(self, step: int) -> None:
    """Dispatches step `step`, then checks the previous one."""
    batch = self.partitioner.shard_batch(self.batch_at(step, self.params))
    state, metrics = self.step_fn(self.carry["state"], batch, jax.random.fold_in(self.rng, step))
    self.settle()
    self._pending.append((step, metrics))
    carry = {"state": state}
    if self.sums:
      sums = self.sums.empty() if self._logged else self.carry["metric_sums"]
      carry["metric_sums"] = self.sums.add(sums, metrics)
    if self.last:
      carry["last_metrics"] = {n: metrics[n] for n in self.last}
    self.carry, self._logged, self.last_metrics = carry, False, metrics

  def settle(self) -> None:
    """Runs the guard on the step whose metrics are pending (raises NonFiniteStep)."""
    while self._pending:
      self.guard.check(*self._pending.pop(), self.checkpointer)

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
