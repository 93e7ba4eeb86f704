"""configs/t5_small.py (T5 v1.1 base oracle/teacher, small student) starts and runs a step on CPU."""

import os

import pytest

from th_distill import config as config_lib, experiment
from th_distill.metrics_io import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_t5_small_config_runs_one_step_with_reduced_lengths(tmp_path):
  config = config_lib.load_config_file(os.path.join(REPO, "configs", "t5_small.py"))
  # The real model shapes; only lengths, pools and step counts shrink.
  config.task.prompt_length = 8
  config.task.response_length = 4
  config.prompts.num_oracle = 8
  config.prompts.num_distill = 8
  config.prompts.num_eval = 4
  config.teacher.steps = 1
  config.teacher.batch_size = 4
  config.teacher.warmup_steps = 0
  config.student.steps = 1
  config.student.batch_size = 4
  config.student.warmup_steps = 0
  config.offline.num_prompts = 4
  config.eval.num_train_prompts = 4
  config.eval_every = 1
  config.regimes = ("offline",)
  summary = experiment.run(config, str(tmp_path))
  rows = read_metrics(str(tmp_path / "offline" / "metrics.jsonl"))
  assert [r["step"] for r in rows] == [0, 1]
  assert summary["regimes"]["offline"]["final_step"] == 1
