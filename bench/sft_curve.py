r"""The golden curve of an SFT on a finished stage 1's oracle data: how good can a teacher get?

  python bench/sft_curve.py --stage1=W/stage1 --model=teacher --steps=1500 --every=100 \
      --config=configs/tiny.py [--config.teacher.learning_rate=1e-3 ...]

Trains `--model` (teacher or student, its shape and SFT optimiser from the config) from its
stage-1 random init on `W/stage1/oracle_data.npz` for `--steps` steps (the config's batch size,
seeded epochs, as stage 1 does) and prints KL(oracle || model) per token on the stage's held-out
oracle samples (`eval_oracle.npz`) and the model's entropy every `--every` steps. The config must
be the one stage 1 ran with, apart from the model's SFT fields (docs/signature_search.md,
section 5, "The teacher's own curve").
"""

from __future__ import annotations

import dataclasses

import jax
from absl import app, flags
from ml_collections import config_flags

from th_distill.config.run_config import RunConfig
from th_distill.data import regimes as regime_lib
from th_distill.partitioning import Partitioner
from th_distill.rundir import checkpoints, param_checkpoints
from th_distill.rundir.layout import Stage1Directory
from th_distill.training.keys import Purpose, key
from th_distill.training.program_builders import Models, new_train_state
from th_distill.training.programs import Programs

INIT = {"teacher": Purpose.TEACHER_INIT, "student": Purpose.STUDENT_INIT}
TRAIN = {"teacher": Purpose.TEACHER_TRAIN, "student": Purpose.STUDENT_SFT}


def main(argv) -> None:
  del argv
  config, name = RunConfig.from_config(CONFIG.value), MODEL.value
  partitioner = Partitioner.from_config(config.mesh)
  models = Models.from_config(config)
  programs = Programs(models, config.program_settings, partitioner)
  stage1 = Stage1Directory(STAGE1.value)
  oracle = param_checkpoints.load_param_trees(
    stage1.params, {"oracle": partitioner.abstract_params(models.oracle)}
  )["oracle"]
  data = checkpoints.load_arrays(stage1.oracle_data)
  held_out = checkpoints.load_arrays(stage1.eval_set("oracle"))
  base = getattr(config, name).sft
  settings = dataclasses.replace(base, steps=STEPS.value)
  model = getattr(models, name)
  state = new_train_state(
    partitioner,
    model,
    partitioner.init_params(model, key(config.seed, INIT[name])),
    settings.build(),
  )
  step_fn = programs.sft_step(name, settings)
  batches = regime_lib.offline_batches(data, settings.batch_size, config.seed)
  evaluate = programs.evaluator(name)
  rng = key(config.seed, TRAIN[name])
  print("step golden entropy")
  for step in range(STEPS.value + 1):
    if step % EVERY.value == 0 or step == STEPS.value:
      # The evaluator scores its first argument as the student; teacher = the model itself.
      row = evaluate(state.params, state.params, oracle, held_out, "eval_oracle")
      print(
        f"{step} {row['eval_oracle/golden/fkl']:.4f} {row['eval_oracle/entropy/student']:.3f}",
        flush=True,
      )
    if step < STEPS.value:
      state, _ = step_fn(
        state, partitioner.shard_batch(batches(step)), jax.random.fold_in(rng, step)
      )


if __name__ == "__main__":
  CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Experiment config.")
  STAGE1 = flags.DEFINE_string("stage1", None, "A finished stage-1 directory.", required=True)
  MODEL = flags.DEFINE_enum("model", "teacher", ["teacher", "student"], "Model to train.")
  STEPS = flags.DEFINE_integer("steps", 1500, "SFT steps.")
  EVERY = flags.DEFINE_integer("every", 100, "Evaluate every this many steps.")
  app.run(main)
