"""Supervised fine-tuning (cross-entropy on a dataset) through the one training loop.

Stage 1 trains the teacher, and the student's starting point, on the oracle data with
`train_sft`: the same `Trainer` as distillation, so an SFT checkpoints every `checkpoint_every`
steps, stops cleanly on pre-emption (a rerun resumes it from its checkpoint) and stops (or skips
a step) on a non-finite loss, as `on_nonfinite` says.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from th_distill.config.settings import OptimizerSettings
from th_distill.data import regimes as regime_lib
from th_distill.observing import progress
from th_distill.planning import flops
from th_distill.training import dispatch, guards
from th_distill.training.hooks import ProgressHook
from th_distill.training.program_builders import new_train_state
from th_distill.training.programs import Programs
from th_distill.training.trainer import Trainer

METRICS = ("sft/loss", "sft/accuracy", "sft/grad_norm")  # what an SFT step returns


def _sft_trainer(
  programs: Programs,
  name: str,
  params: Any,
  data: dict[str, np.ndarray],
  settings: OptimizerSettings,
  seed: int,
  rng: jax.Array,
  *,
  checkpoint_dir: str,
  checkpoint_every: int,
  on_nonfinite: str,
) -> Trainer:
  """The `Trainer` of model `name`'s SFT: its compiled step over the seeded epochs of `data`,
  as many steps per dispatch as the mesh settings give for its FLOPs, and its non-finite
  guard."""
  model = getattr(programs.models, name)
  title = f"{name} SFT"
  lengths = programs.settings.prompt_length, programs.settings.response_length
  step_flops = settings.batch_size * flops.train_flops(model.cfg, *lengths)
  per_dispatch = dispatch.steps_per_dispatch(
    programs.settings.steps_per_dispatch, step_flops, programs.partitioner.platform
  )
  return Trainer(
    title,
    programs.sft_step(name, settings, on_nonfinite),
    regime_lib.offline_batches(data, settings.batch_size, seed),
    new_train_state(programs.partitioner, model, params, settings.build()),
    partitioner=programs.partitioner,
    checkpoint_dir=checkpoint_dir,
    steps=settings.steps,
    checkpoint_every=checkpoint_every,
    rng=rng,
    guard=guards.StepWatch(
      title,
      on_nonfinite,
      loss="sft/loss",
      grad_norm="sft/grad_norm",
      fix=f"lower {name}.learning_rate",
    ),
    last=METRICS,
    steps_fn=programs.sft_step(name, settings, on_nonfinite, dispatched=True),
    steps_per_dispatch=per_dispatch,
    needs_params_at=lambda step: False,  # the dataset's batches
  )


def train_sft(
  programs: Programs,
  name: str,
  params: Any,
  data: dict[str, np.ndarray],
  settings: OptimizerSettings,
  seed: int,
  rng: jax.Array,
  *,
  checkpoint_dir: str,
  checkpoint_every: int,
  on_nonfinite: str = "stop",
  phase: progress.Phase | None = None,
) -> tuple[Any, dict[str, float]]:
  """Cross-entropy training of model `name`'s `params` on `data` (prompts, responses, mask) for
  `settings.steps` steps of `settings.batch_size` rows in seeded epochs, resumed from the latest
  checkpoint in `checkpoint_dir`; returns the parameters and the last step's metrics. Raises
  guards.NonFiniteStep on a non-finite step (`on_nonfinite = 'stop'`),
  rundir.preemption.Preempted after checkpointing on pre-emption."""
  trainer = _sft_trainer(
    programs,
    name,
    params,
    data,
    settings,
    seed,
    rng,
    checkpoint_dir=checkpoint_dir,
    checkpoint_every=checkpoint_every,
    on_nonfinite=on_nonfinite,
  )
  if phase is None:  # a stand-alone SFT: a phase that times and logs itself
    work = [progress.Work("steps", "sft", settings.steps, 0)]
    phase = progress.RunClock([]).phase(trainer.name, work=work)
  phase.skip("steps", trainer.start_step)
  # Progress lines time each step (th_distill.observing.progress): they read its loss when shown.
  trainer.add_hook(
    ProgressHook(phase, "steps", lambda t: f"loss {float(t.last_metrics['sft/loss']):.4f}")
  )
  trainer.run()
  phase.finish()
  final = {k: float(v) for k, v in trainer.last_metrics.items()} if settings.steps else {}
  return trainer.params, final
