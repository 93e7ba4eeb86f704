"""Every shipped config builds, validates and runs 2 distillation steps end to end, with its
models swapped for small ones and the real tasks on mocked TFDS / local task files; the paper
configs load their oracle, teacher and student from (small) Hugging Face checkpoints, and the
prompt-file configs from tiny random Qwen2 directories with a JSONL file of prompts."""

import glob
import os

import jax
import ml_collections
import numpy as np
import pytest

pytest.importorskip("seqio")
pytest.importorskip("tensorflow_datasets")

import real_task_data  # noqa: E402
from hf_artifacts import CORPUS, write_prompt_file, write_qwen2  # noqa: E402

from th_distill import config as config_lib
from th_distill import experiment  # noqa: E402
from th_distill.models import pretrained  # noqa: E402
from th_distill.observing.metrics_io import read_metrics  # noqa: E402
from th_distill.partitioning import Partitioner  # noqa: E402
from th_distill.rundir import checkpoints, param_checkpoints
from th_distill.training.program_builders import Models  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py")))
VOCAB = 256  # embedding rows: the test SentencePiece model has up to 256 pieces


def test_every_config_is_covered():
  assert {"tiny", "t5_small", "xsum_large_to_base", "wmt", "natural_instructions"} <= set(CONFIGS)


def _shrink(config, tmp_path):
  """Small models, lengths, pools and step counts, one optimiser and memory setting; the rest
  as the file sets it. Returns the config and the parameters of the checkpoints it loads."""
  small = dict(
    vocab_size=VOCAB,
    d_model=16,
    d_kv=4,
    d_ff=32,
    num_heads=2,
    num_encoder_layers=1,
    num_decoder_layers=1,
  )
  for name in ("oracle", "teacher", "student"):
    config[name].model = config_lib.model_config("tiny", **small)
  config.task.update(vocab_size=VOCAB, prompt_length=24, response_length=8)
  config.prompts.update(num_oracle=16, num_distill=16, num_eval=8)
  config.teacher.update(steps=2, batch_size=8)
  config.student.update(steps=2, sft_steps=2, batch_size=8)
  config.offline.num_prompts = 8
  config.eval.update(num_train_prompts=8, batch_size=8)
  config.update(eval_every=1, checkpoint_every=2, regimes=("offline",))
  # One optimiser and memory setting for all, so that the configs share compiled functions
  # (seconds instead of minutes; bfloat16 frozen models and chunks are tested in test_pipeline).
  for section in (config.teacher, config.student):
    section.update(learning_rate=1e-3, warmup_steps=0, schedule="constant")
  config.update(frozen_dtype="bfloat16", sequence_chunks=4, eval_log_points=0)
  config.write_figures = False  # ~2 s a run; test_pipeline checks the figures
  written = {}
  if config.task.source == "seqio":
    os.makedirs(tmp_path, exist_ok=True)
    config.task.vocabulary = real_task_data.train_sentencepiece(tmp_path)
    if config.task.name == "natural_instructions":
      config.task.data_dir = real_task_data.write_natural_instructions(tmp_path / "ni")
    for seed, name in enumerate(("oracle", "teacher", "student")):
      config[name].checkpoint = str(tmp_path / name)
      written[name] = real_task_data.write_hf_checkpoint(
        config[name].checkpoint, config_lib.to_t5_config(config[name].model), seed
      )
  if config.task.source == "prompt_file":
    written = _own_models(config, tmp_path)
  return config, written


def _own_models(config, tmp_path) -> dict:
  """Points a prompt-file config at three tiny random Qwen2 directories (their architecture read
  from the files) and a JSONL file of prompts; returns the oracle's parameters as loaded."""
  artifacts = {
    name: write_qwen2(tmp_path / name, seed=seed)
    for seed, name in enumerate(("oracle", "teacher", "student"))
  }
  texts = [f"{i}: {sentence}" for i, sentence in enumerate(sorted(set(CORPUS)) * 10)]
  config.task.update(
    prompt_file=write_prompt_file(tmp_path / "prompts.jsonl", texts),
    vocabulary=artifacts["oracle"].directory,
    vocab_size=artifacts["oracle"].model.config.vocab_size,
  )
  for name, artifact in artifacts.items():
    config[name].model = ml_collections.ConfigDict({"family": "checkpoint", "remat": "none"})
    config[name].checkpoint = artifact.directory
  return {"oracle": pretrained.load_checkpoint(artifacts["oracle"].directory).params}


def test_every_config_runs_two_steps(tmp_path):
  # One test, one process: the configs share their compiled steps where their shapes agree.
  for name in CONFIGS:
    config = config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
    config, written = _shrink(config, tmp_path / name)
    run_config = config_lib.validate(config)
    workdir = tmp_path / name / "run"
    with real_task_data.mocked_tfds():
      summary = experiment.run(config, str(workdir))
    rows = read_metrics(str(workdir / "offline" / "metrics.jsonl"))
    assert [r["step"] for r in rows] == [0, 1, 2], name
    assert all(np.isfinite(r["eval_oracle/golden/fkl"]) for r in rows), name
    assert summary["regimes"]["offline"]["final_step"] == 2, name
    info = checkpoints.read_json(str(workdir / "stage1" / "info.json"))
    assert ("checkpoint" in info["oracle"]) == (config.oracle.source == "checkpoint"), name
    if config.oracle.source == "checkpoint":  # the oracle is the checkpoint, untouched
      model = Models.from_config(run_config).oracle
      oracle = param_checkpoints.load_param_trees(
        str(workdir / "stage1" / "params"),
        {"oracle": Partitioner.from_config(config.mesh).abstract_params(model)},
      )["oracle"]
      jax.tree_util.tree_map(
        np.testing.assert_array_equal, jax.device_get(oracle), written["oracle"]
      )
