"""What each phase of a run computes, from the config alone: samples to draw, steps to train,
evaluations, and their FLOPs (`th_distill.planning.flops`). `phases` lists them for the plan a run prints
before any work and for the progress lines and ETAs of `th_distill.observing.progress`; the pipeline
reports to them by key (`ORACLE_CALIBRATION`, ..., `regime_key(regime)`).
"""

from __future__ import annotations

import ml_collections

from th_distill import oracle
from th_distill.config import to_t5_config
from th_distill.observing.eval_schedule import evaluation_steps
from th_distill.observing.progress import Phase, Work
from th_distill.planning import flops

ORACLE_CALIBRATION = "oracle calibration"
ORACLE_SAMPLES = "oracle samples"
TEACHER_SFT = "teacher SFT"
STUDENT_SFT = "student SFT"
EVAL_SETS = "evaluation sets"
OFFLINE_DATASET = "offline dataset"
STAGE1 = (ORACLE_CALIBRATION, ORACLE_SAMPLES, TEACHER_SFT, STUDENT_SFT, EVAL_SETS)
# Oracle samples per calibration pass (`stages.stage1.run`), before rounding to the mesh.
CALIBRATION_ROWS = 256


def regime_key(regime: str) -> str:
  return f"regime {regime}"


def calibration_rows(config: ml_collections.ConfigDict, data_parallel: int) -> int:
  """Prompts per oracle calibration pass: up to 256 held-out prompts, a multiple of the
  data-parallel size."""
  return min(CALIBRATION_ROWS, config.prompts.num_eval) // data_parallel * data_parallel


def phases(
  config: ml_collections.ConfigDict, data_parallel: int, done: set[str] = frozenset()
) -> list[Phase]:
  """The run's phases in order, with their work; those in `done` are marked finished."""
  li, lt = config.task.prompt_length, config.task.response_length
  cfg = {m: to_t5_config(config[m].model) for m in ("oracle", "teacher", "student")}
  gen = {m: flops.generation_flops(c, li, lt) for m, c in cfg.items()}
  fwd = {m: flops.forward_flops(c, li, lt) for m, c in cfg.items()}
  s, t = config.student, config.teacher
  listed = []
  if config.oracle.source == "synthetic":
    rows = calibration_rows(config, data_parallel)
    listed.append(
      Phase(
        ORACLE_CALIBRATION,
        f"stage 1: {ORACLE_CALIBRATION} ({rows} prompts)",
        [
          Work(
            "sampling passes",
            "sample",
            oracle.CALIBRATION_ITERATIONS + 1,
            rows * (gen["oracle"] + fwd["oracle"]),
          )
        ],
      )
    )
  listed.append(
    Phase(
      ORACLE_SAMPLES,
      f"stage 1: {ORACLE_SAMPLES}",
      [Work("samples", "sample", config.prompts.num_oracle, gen["oracle"])],
    )
  )
  listed.append(
    Phase(
      TEACHER_SFT,
      f"stage 1: {TEACHER_SFT} (batch {t.batch_size})",
      [Work("steps", "sft", t.steps, t.batch_size * flops.train_flops(cfg["teacher"], li, lt))],
    )
  )
  if s.init == "sft":
    listed.append(
      Phase(
        STUDENT_SFT,
        f"stage 1: {STUDENT_SFT} (batch {s.batch_size})",
        [
          Work(
            "steps", "sft", s.sft_steps, s.batch_size * flops.train_flops(cfg["student"], li, lt)
          )
        ],
      )
    )
  listed.append(
    Phase(
      EVAL_SETS,
      f"stage 1: {EVAL_SETS} (oracle and teacher)",
      [
        Work("samples", "sample", 2 * config.prompts.num_eval, (gen["oracle"] + gen["teacher"]) / 2)
      ],
    )
  )
  if "offline" in config.regimes:
    n = config.offline.num_prompts * config.offline.generations_per_prompt
    listed.append(
      Phase(
        OFFLINE_DATASET,
        f"stage 2: {OFFLINE_DATASET} (teacher)",
        [Work("samples", "sample", n, gen["teacher"])],
      )
    )
  evaluations = len(evaluation_steps(s.steps, config.eval_every, config.eval_log_points))
  for k, regime in enumerate(config.regimes, 1):
    step = s.batch_size * flops.distill_flops(cfg["student"], cfg["teacher"], li, lt, cfg["oracle"])
    work = [Work("steps", "distill", s.steps, step)]
    if regime == "offline":
      train_rows = min(
        config.eval.num_train_prompts,
        config.offline.num_prompts * config.offline.generations_per_prompt,
      )
    else:
      online = (
        config.offline.num_prompts
        if config.online.prompts == "offline"
        else config.prompts.num_distill
      )
      train_rows = min(config.eval.num_train_prompts, online)
      samplers = {
        "online_teacher": ("teacher",),
        "online_student": ("student",),
        "mixture": ("teacher", "student"),
      }[regime]
      work += [
        Work("generated batches", "sample", s.steps, s.batch_size * sum(gen[m] for m in samplers)),
        Work("train-prompt samples", "sample", train_rows, gen["teacher"]),
      ]
    eval_rows = 3 * config.prompts.num_eval + train_rows
    work.append(
      Work(
        "evaluations",
        "eval",
        evaluations,
        config.prompts.num_eval * gen["student"] + eval_rows * sum(fwd.values()),
      )
    )
    listed.append(
      Phase(
        regime_key(regime), f"regime {k} of {len(config.regimes)} ({regime})", work, lines=False
      )
    )
  for p in listed:
    p.finished = p.key in done
  return listed
