"""What each phase of a run computes, from the config alone: samples to draw, steps to train,
evaluations, and their FLOPs (`th_distill.planning.flops`).

`phases` lists them for the plan a run prints before any work and for the progress lines and
ETAs of `th_distill.observing.progress`; the pipeline reports to them by key
(`ORACLE_CALIBRATION`, ..., `regime_key(regime)`). Stage 1's phases are listed here; a regime's
own work (its generated batches, a dataset it builds first) comes from its batch source
(`BatchSource.work`, `BatchSource.phases`), so a new regime's estimates are its own.
"""

from __future__ import annotations

from th_distill import oracle
from th_distill.config.run_config import MODELS, RunConfig
from th_distill.observing.progress import Phase, Work
from th_distill.planning import flops
from th_distill.training import sources
from th_distill.training.batch_source import CostFn

ORACLE_CALIBRATION = "oracle calibration"
ORACLE_SAMPLES = "oracle samples"
TEACHER_SFT = "teacher SFT"
STUDENT_SFT = "student SFT"
EVAL_SETS = "evaluation sets"
STAGE1 = (ORACLE_CALIBRATION, ORACLE_SAMPLES, TEACHER_SFT, STUDENT_SFT, EVAL_SETS)
# Oracle samples per calibration pass (`stages.stage1.run`), before rounding to the mesh.
CALIBRATION_ROWS = 256


def regime_key(regime: str) -> str:
  return f"regime {regime}"


def calibration_rows(num_eval: int, data_parallel: int) -> int:
  """Prompts per oracle calibration pass: up to 256 of the `num_eval` held-out prompts, a
  multiple of the data-parallel size."""
  return min(CALIBRATION_ROWS, num_eval) // data_parallel * data_parallel


def cost_fn(config: RunConfig) -> CostFn:
  """`cost(kind, model)`: FLOPs per row of one model's generation ('generate') or teacher-forced
  forward pass ('forward') at the task's lengths."""
  li, lt = config.task.prompt_length, config.task.response_length
  table = {
    (kind, m): fn(config.model(m), li, lt)
    for m in MODELS
    for kind, fn in (("generate", flops.generation_flops), ("forward", flops.forward_flops))
  }
  return lambda kind, model: table[kind, model]


# The generation-cost keys of a regime's summary (`generation_cost`).
COST_KEYS = (
  "teacher_samples_generated",
  "student_samples_generated",
  "generation_flops",
  "training_flops",
)


def generation_cost(
  config: RunConfig, regime: str, steps: int, refreshed_at: int | None = None
) -> dict[str, float]:
  """What a run of `regime` that trained `steps` steps paid for its data: the teacher's and
  the student's samples drawn for training (`BatchSource.generated`; the evaluations' are not
  counted), their generation FLOPs, and the distillation steps' FLOPs (student forward and
  backward, teacher and oracle forwards). `refreshed_at`: the step at which an offline run's
  detector switched it to fresh teacher samples (`detection.on_detect = 'refresh'`), if it did."""
  cost, source = cost_fn(config), sources.source_class(regime)
  if refreshed_at is None:
    generated = source.generated(config, steps)
  else:
    generated = source.generated_after(config, steps, refreshed_at)
  return {
    "teacher_samples_generated": generated["teacher"],
    "student_samples_generated": generated["student"],
    "generation_flops": sum(n * cost("generate", m) for m, n in generated.items()),
    "training_flops": steps * distill_step_flops(config),
  }


def distill_step_flops(config: RunConfig) -> float:
  """FLOPs of one distillation step of `student.batch_size` examples."""
  li, lt = config.task.prompt_length, config.task.response_length
  per_example = flops.distill_flops(
    config.model("student"), config.model("teacher"), li, lt, config.model("oracle")
  )
  return config.student.batch_size * per_example


def _stage1(config: RunConfig, data_parallel: int, cost: CostFn) -> list[Phase]:
  li, lt = config.task.prompt_length, config.task.response_length
  listed = []
  if config.oracle.source == "synthetic":
    rows = calibration_rows(config.prompts.num_eval, data_parallel)
    per_pass = rows * (cost("generate", "oracle") + cost("forward", "oracle"))
    listed.append(
      Phase(
        ORACLE_CALIBRATION,
        f"stage 1: {ORACLE_CALIBRATION} ({rows} prompts)",
        [Work("sampling passes", "sample", oracle.CALIBRATION_ITERATIONS + 1, per_pass)],
      )
    )
  listed.append(
    Phase(
      ORACLE_SAMPLES,
      f"stage 1: {ORACLE_SAMPLES}",
      [Work("samples", "sample", config.prompts.num_oracle, cost("generate", "oracle"))],
    )
  )
  for key, name in ((TEACHER_SFT, "teacher"), (STUDENT_SFT, "student")):
    sft = getattr(config, name).sft
    if sft is None:
      continue
    step = sft.batch_size * flops.train_flops(config.model(name), li, lt)
    listed.append(
      Phase(
        key, f"stage 1: {key} (batch {sft.batch_size})", [Work("steps", "sft", sft.steps, step)]
      )
    )
  per_sample = (cost("generate", "oracle") + cost("generate", "teacher")) / 2
  listed.append(
    Phase(
      EVAL_SETS,
      f"stage 1: {EVAL_SETS} (oracle and teacher)",
      [Work("samples", "sample", 2 * config.prompts.num_eval, per_sample)],
    )
  )
  return listed


def _regime(config: RunConfig, k: int, regime: str, cost: CostFn) -> Phase:
  source = sources.source_class(regime)
  s = config.student
  step = distill_step_flops(config)
  evaluations = len(config.eval_settings.steps)
  eval_rows = 3 * config.prompts.num_eval + source.train_rows(config)
  eval_cost = config.prompts.num_eval * cost("generate", "student") + eval_rows * sum(
    cost("forward", m) for m in MODELS
  )
  work = [
    Work("steps", "distill", s.steps, step),
    *source.work(config, cost),
    Work("evaluations", "eval", evaluations, eval_cost),
  ]
  title = f"regime {k} of {len(config.regimes)} ({regime})"
  return Phase(regime_key(regime), title, work, lines=False)


def phases(config: RunConfig, data_parallel: int, done: set[str] = frozenset()) -> list[Phase]:
  """The run's phases in order, with their work; those in `done` are marked finished."""
  cost = cost_fn(config)
  listed = _stage1(config, data_parallel, cost)
  for regime in config.regimes:  # a source's own phases (the offline dataset) come first, once
    for phase in sources.source_class(regime).phases(config, cost):
      if phase.key not in {p.key for p in listed}:
        listed.append(phase)
  listed += [_regime(config, k, r, cost) for k, r in enumerate(config.regimes, 1)]
  for p in listed:
    p.finished = p.key in done
  return listed
