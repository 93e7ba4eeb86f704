"""`Distiller`: your student distilled from your teacher on your data, by the library's loop.

A project builds one from its models (Flax modules implementing
`th_distill.models.interface.LanguageModel`, or their configs), their parameters, an optax
optimizer and the loss, and calls `train(data, steps)`. `data` (read by
`th_distill.training.train_data`) is any of

- a sequence of batches (a list: step t reads item t mod its length, so a list is read in
  epochs), or any other iterable of them (read in order, one per step);
- a function `fn(step, student_params) -> batch` (e.g. the student's own samples);
- a batch source of the library's data regimes
  (`th_distill.training.batch_source.BatchSource`, or any object with its
  `batch_at(step, student_params)`);

where a batch is a `th_distill.data.batch.Batch` or a mapping of its arrays (`BATCH_ARRAYS`:
prompts [B, Li] int32, prompt_mask [B, Li] bool, responses [B, Lt] int32, mask [B, Lt]
float32). Every step logs the distillation loss and the proxy divergences to the teacher; with an
oracle (the ground truth the teacher only approximates) the golden ones too (`train/golden/*`).
Attached before `train`:

- `evaluate_on(batch, every)`: evaluation rows on a fixed batch (`{name}/proxy/*` always,
  `{name}/golden/*` with an oracle) at step 0, every `every` steps and the last step;
  `evaluate_with(evaluate, schedule)` for an evaluation of one's own (the command line's);
- `watch(settings)`: the hacking detector (`th_distill.detection`) on those rows while training
  (its verdict in `monitor`; `on_detect = 'stop'` ends the run when it fires);
- `add_hook(fn, every)`: `fn(step, student_params, metrics)` every `every` steps, or any
  `training.trainer.Hook`; `add_actions` for `training.hooks.RowAction`s on each row.

With a `workdir` the rows go to `WORKDIR/metrics.jsonl` and TensorBoard events, and the train
state to Orbax checkpoints in `WORKDIR/checkpoints/` (every `checkpoint_every` steps, at the
end, on pre-emption): `train` called again (in a new process too) resumes from the last one, and
a resumed run gives the parameters and rows of an uninterrupted one when the data gives the same
batch at each step (an iterable is re-read from its start, the steps done skipped). Progress
lines are absl INFO logs, shown from Python as from the command line (`observing.progress`).
The command line's stage 2 (`th_distill.stages.distill.run_regime`) is this object with the
data regimes' sources and the run's evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import optax
from absl import logging

from th_distill.config.settings import DistillSettings, LossSettings
from th_distill.detection.monitor import HackingMonitor
from th_distill.detection.settings import DEFAULTS, DetectorSettings
from th_distill.models.families import module_of
from th_distill.models.interface import LanguageModel, ModelConfig
from th_distill.observing import progress
from th_distill.observing.eval_schedule import EvaluationSchedule
from th_distill.observing.metric_names import DISTILL_METRICS, curve
from th_distill.partitioning import Partitioner, make_mesh
from th_distill.rundir.kept import KeptParameters
from th_distill.training import guards
from th_distill.training.distiller_parts import Evaluation, EveryHook, RunRows, checkpoint_folder
from th_distill.training.eval_steps import reduce_eval_sums
from th_distill.training.hooks import (
  DetectorAction,
  Evaluate,
  EvaluationHook,
  ProgressHook,
  RowAction,
)
from th_distill.training.program_builders import (
  Models,
  distill_program,
  eval_program,
  new_train_state,
)
from th_distill.training.train_data import DataSource, as_batch, data_source
from th_distill.training.trainer import Hook, Trainer

# make(start, history) -> row actions: called once the run's first step is known (after its
# checkpoint is restored), with the rows logged before it.
MakeActions = Callable[[int, list[dict[str, float]]], Iterable[RowAction]]


def _module(model: LanguageModel | ModelConfig | None) -> LanguageModel | None:
  """A model given as its Flax module or its config (`models.module_of`)."""
  return module_of(model) if isinstance(model, ModelConfig) else model


class Distiller:
  """Distils `student` from `teacher` (see the module docstring).

  Args:
    student, teacher, oracle: `LanguageModel` Flax modules, or model configs of a registered
      family (`models.register_family`); `oracle` (optional) is the ground truth the golden
      metrics measure against.
    optimizer: the student's optax transformation.
    student_params, teacher_params, oracle_params: their parameters (boxed or not); the
      student's are copied, never changed.
    loss: 'fkl', 'rkl' or 'jsd' (with `beta`), logits divided by `temperature`; or a
      `config.settings.LossSettings`.
    micro_batches, sequence_chunks: gradient accumulation and chunked logits
      (`training.steps.distill_step`); on_nonfinite: 'stop' (raise `guards.NonFiniteStep`) or
      'skip' a non-finite step.
    workdir: where rows and checkpoints go (None: rows kept in memory only, no resume).
    checkpoint_every: steps between checkpoints (with a workdir).
    rng: the key folded with each step (dropout); default `PRNGKey(0)`.
    partitioner: the mesh (default: every device, data-parallel).
    steps_per_dispatch: up to K steps per compiled call where the batches do not depend on the
      student (`training.dispatch`).
    name: the run's name in progress lines and errors.
  """

  def __init__(
    self,
    student: LanguageModel | ModelConfig,
    teacher: LanguageModel | ModelConfig,
    optimizer: optax.GradientTransformation,
    *,
    student_params: Any,
    teacher_params: Any,
    oracle: LanguageModel | ModelConfig | None = None,
    oracle_params: Any = None,
    loss: str | LossSettings = "fkl",
    beta: float = 0.5,
    temperature: float = 1.0,
    micro_batches: int = 1,
    sequence_chunks: int = 1,
    on_nonfinite: str = "stop",
    workdir: str | None = None,
    checkpoint_every: int = 1000,
    rng: jax.Array | None = None,
    partitioner: Partitioner | None = None,
    steps_per_dispatch: int = 1,
    name: str = "distill",
  ):
    if (oracle is None) != (oracle_params is None):
      raise ValueError("oracle and oracle_params: give both (golden metrics) or neither.")
    if checkpoint_every < 1 or steps_per_dispatch < 1:
      raise ValueError("checkpoint_every and steps_per_dispatch must be >= 1.")
    if not isinstance(loss, LossSettings):
      loss = LossSettings(loss, beta, False, temperature)
    self.settings = DistillSettings(
      loss, None, micro_batches, sequence_chunks, on_nonfinite, "float32"
    )
    found = self.settings.problems()
    if found:
      raise ValueError("Distiller: " + "; ".join(f"{field}: {why}" for field, why in found))
    self.partitioner = partitioner or Partitioner(make_mesh())
    self.models = Models(_module(oracle), _module(teacher), _module(student))
    self.frozen = (
      self._placed(self.models.teacher, teacher_params),
      None if oracle is None else self._placed(self.models.oracle, oracle_params),
    )
    self.student_params, self.optimizer = nn.unbox(student_params), optimizer
    self.workdir, self.checkpoint_every, self.name = workdir, checkpoint_every, name
    self.rng = jax.random.PRNGKey(0) if rng is None else rng
    self.steps_per_dispatch = steps_per_dispatch
    self._evaluation: Evaluation | None = None
    self._hooks: list[Hook] = []
    self._actions: list[MakeActions] = []
    self.monitor: HackingMonitor | None = None  # the detector's, once `train` starts (`watch`)
    self.kept: KeptParameters | None = None
    self.rows: list[dict[str, float]] = []
    self.params, self.step, self.stop_reason = None, None, None

  def _placed(self, model: LanguageModel, params: Any) -> Any:
    return jax.device_put(nn.unbox(params), self.partitioner.param_shardings(model))

  @property
  def golden(self) -> bool:
    """Whether an oracle is given (golden metrics)."""
    return self.models.oracle is not None

  def evaluate_on(self, batch: Any, every: int, name: str = "eval") -> Distiller:
    """Evaluation rows on the fixed `batch` (a `Batch` or mapping, e.g. teacher samples on
    held-out prompts; placed on the devices once) at step 0, every `every` steps and the last:
    `{name}/proxy/{fkl,rkl,jsd}` per token (`_seq`: per sequence) and the entropies, with an
    oracle `{name}/golden/*` too (`training.eval_steps.eval_sums`), beside the training means since
    the row before (`train/*`)."""
    if every < 1:
      raise ValueError(f"evaluate_on: every must be >= 1, got {every}.")
    batch = self.partitioner.shard_batch(as_batch(batch))
    program = eval_program(
      self.models, self.models.student, self.settings.sequence_chunks, self.partitioner
    )

    def evaluate(params: Any, step: int) -> dict[str, float]:
      del step
      return reduce_eval_sums(jax.device_get(program(params, *self.frozen, batch)), name)

    golden = curve(name, "golden", "fkl") if self.golden else None
    schedule = lambda steps: EvaluationSchedule(steps, every)  # noqa: E731
    return self.evaluate_with(evaluate, schedule, curve(name, "proxy", "fkl"), golden)

  def evaluate_with(
    self,
    evaluate: Evaluate,
    schedule: Callable[[int], Any],
    proxy: str,
    golden: str | None = None,
  ) -> Distiller:
    """Evaluation rows of `evaluate(student_params, step) -> {name: value}` at the steps of
    `schedule(steps)` (an `observing.eval_schedule.EvaluationSchedule`); `proxy` and `golden`
    name the headline metrics (progress lines; the detector watches `proxy` by default)."""
    self._evaluation = Evaluation(evaluate, schedule, proxy, golden)
    return self

  def watch(
    self,
    settings: DetectorSettings = DEFAULTS,
    metric: str | None = None,
    on_detect: str = "continue",
    keep: Sequence[str] = (),
  ) -> Distiller:
    """The hacking detector on each evaluation row (`metric`, default the evaluation's proxy):
    `detector/fired` and `detector/score` join the rows, `monitor.result` is its verdict;
    `on_detect = 'stop'` ends the run when it fires; `keep` ('best_golden', 'best_predicted',
    needs a workdir) keeps those parameters (`rundir.kept`)."""
    if keep and self.workdir is None:
      raise ValueError("watch(keep=...) keeps parameters in the workdir: give one.")

    def make(start: int, history: list[dict[str, float]]) -> list[RowAction]:
      del start
      evaluation = self._evaluation
      self.monitor = HackingMonitor.replay(
        metric or evaluation.proxy, evaluation.golden or "", settings, on_detect, history
      )
      self.kept = KeptParameters(self.workdir or "", keep)
      return [DetectorAction(self.monitor, self.kept)]

    return self.add_actions(make)

  def add_actions(self, make: MakeActions) -> Distiller:
    """`make(start, history)` -> `training.hooks.RowAction`s reading (and adding to) each
    evaluation row; called by `train` once its first step is known, in the order added."""
    self._actions.append(make)
    return self

  def add_hook(
    self, hook: Hook | Callable[[int, Any, dict[str, float]], None], every: int = 1
  ) -> Distiller:
    """`hook(step, student_params, metrics)` at every `every`-th step (the parameters after
    `step` steps, the last step's training metrics), or a `training.trainer.Hook`."""
    if every < 1:
      raise ValueError(f"add_hook: every must be >= 1, got {every}.")
    self._hooks.append(hook if isinstance(hook, Hook) else EveryHook(hook, every))
    return self

  @property
  def _summed(self) -> tuple[str, ...]:
    return tuple(n for n in DISTILL_METRICS if self.golden or "/golden/" not in n)

  def _trainer(self, source: DataSource, steps: int, checkpoint_dir: str) -> Trainer:
    models, settings, frozen, k = self.models, self.settings, self.frozen, self.steps_per_dispatch
    step = distill_program(models, settings, self.partitioner, False, self.optimizer)
    many = (
      distill_program(models, settings, self.partitioner, True, self.optimizer) if k > 1 else None
    )
    state = new_train_state(self.partitioner, models.student, self.student_params, self.optimizer)
    return Trainer(
      self.name,
      lambda state, batch, rng: step(state, *frozen, batch, rng),
      source.batch_at,
      state,
      partitioner=self.partitioner,
      checkpoint_dir=checkpoint_dir,
      steps=steps,
      checkpoint_every=self.checkpoint_every,
      rng=self.rng,
      guard=guards.StepWatch(self.name, settings.on_nonfinite),
      summed=self._summed,
      carried=source.carried,
      steps_fn=(lambda state, *args: many(state, *frozen, *args)) if many else None,
      steps_per_dispatch=k,
      needs_params_at=source.needs_params_at,
    )

  def train(
    self, data: Any, steps: int, *, phase: progress.Phase | None = None
  ) -> list[dict[str, float]]:
    """Trains to `steps` (from the workdir's last checkpoint, if any) on `data` (module
    docstring); returns the evaluation rows, every one of the run (also `rows`). Then `params`
    holds the student's parameters, `step` the last step, `stop_reason` why it stopped early
    (None if it did not). `phase`: the progress phase to count in (default: one of its own).
    Raises `rundir.preemption.Preempted` on pre-emption (checkpointed), `guards.NonFiniteStep`
    on a non-finite step with `on_nonfinite = 'stop'`."""
    if steps < 0:
      raise ValueError(f"train: steps must be >= 0, got {steps}.")
    source = data_source(data)
    with checkpoint_folder(self.workdir) as directory, progress.shown():
      trainer = self._trainer(source, steps, directory)
      phase = phase or progress.Phase(
        self.name,
        self.name,
        [progress.Work("steps", "distill", steps, 1.0)],
        lines=self._evaluation is None,
      )
      self._attach(trainer, steps, phase)
      logging.info("%s: steps %d..%d", phase.title, trainer.start_step, steps)
      self.step = trainer.run()
      phase.finish()
    self.params, self.stop_reason = trainer.params, trainer.stop_reason
    return self.rows

  def _attach(self, trainer: Trainer, steps: int, phase: progress.Phase) -> None:
    """The evaluation (its row actions), progress and the user's hooks; the work done before
    a resumed run's first step skipped in `phase`."""
    start, evaluation = trainer.start_step, self._evaluation
    if evaluation is not None:
      schedule = evaluation.schedule(steps)
      rows = RunRows.open(self.workdir, start, schedule)
      self.rows = rows.rows
      actions = [action for make in self._actions for action in make(start, list(rows.rows))]
      trainer.add_hook(
        EvaluationHook(schedule, evaluation.evaluate, rows, phase, evaluation.line, actions)
      )
      phase.skip("evaluations", schedule.below(start))
    elif self._actions:
      raise ValueError("watch / add_actions read the evaluation rows: call evaluate_on first.")
    trainer.add_hook(ProgressHook(phase, "steps"))
    for hook in self._hooks:
      trainer.add_hook(hook)
    phase.skip("steps", start)
