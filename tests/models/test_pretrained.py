"""Checkpoints and vocabularies: teacher/student initialised from Hugging Face checkpoints, and
every mismatch (architecture, tensor shape, vocabulary size or ids, missing files or data) an
error naming the config field or parameter, raised before any compute."""

import os

import jax
import numpy as np
import pytest

pytest.importorskip("safetensors")

import real_task_data  # noqa: E402

from th_distill import config as config_lib  # noqa: E402
from th_distill import experiment
from th_distill.config.run_config import RunConfig  # noqa: E402
from th_distill.data.vocabularies import SyntheticVocabulary  # noqa: E402
from th_distill.partitioning import Partitioner  # noqa: E402
from th_distill.stages import stage1  # noqa: E402
from th_distill.training.program_builders import Models  # noqa: E402
from th_distill.training.programs import Programs  # noqa: E402


def _write(micro, tmp_path, name, seed=0, **overrides):
  cfg = config_lib.to_t5_config(micro[name].model).replace(**overrides)
  params = real_task_data.write_hf_checkpoint(tmp_path / name, cfg, seed)
  micro[name].checkpoint = str(tmp_path / name)
  return params


def _programs(micro):
  """The run's typed config and its programs."""
  typed = RunConfig.from_config(micro)
  programs = Programs(
    Models.from_config(typed), typed.program_settings, Partitioner.from_config(micro.mesh)
  )
  return typed, programs


def _assert_config_error(micro, tmp_path, *messages):
  workdir = tmp_path / "run"
  with pytest.raises(config_lib.ConfigError) as error:
    experiment.run(micro, str(workdir))
  for message in messages:
    assert message in str(error.value)
  assert not workdir.exists(), "nothing may be written before validation"


def test_teacher_and_student_start_from_their_checkpoints(micro, tmp_path):
  expected = {
    name: _write(micro, tmp_path, name, seed) for seed, name in enumerate(("teacher", "student"))
  }
  config_lib.validate(micro)
  typed, programs = _programs(micro)
  for name in ("teacher", "student"):
    params = stage1.initial_params(typed, name, programs, jax.random.PRNGKey(0))
    jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(params), expected[name])


def test_t5x_checkpoint_loads_exactly_and_a_misfit_names_the_parameter(micro, tmp_path):
  cfg = config_lib.to_t5_config(micro.teacher.model)
  expected = real_task_data.write_t5x_checkpoint(tmp_path / "t5x", cfg, seed=3)
  micro.teacher.checkpoint = str(tmp_path / "t5x")
  config_lib.validate(micro)
  typed, programs = _programs(micro)
  params = stage1.initial_params(typed, "teacher", programs, jax.random.PRNGKey(0))
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(params), expected)
  micro.teacher.model.d_ff = 48
  micro.teacher.model.num_decoder_layers = 2
  _assert_config_error(
    micro,
    tmp_path,
    "teacher.checkpoint: decoder/layers_0/mlp/wi_0/kernel: shape (16, 32), expected (16, 48)",
    "teacher.checkpoint: decoder/layers_1/mlp/wo/kernel: missing",
  )


def test_architecture_mismatch_names_the_model_field(micro, tmp_path):
  _write(micro, tmp_path, "teacher", d_model=32, d_ff=48)
  micro.oracle.source = "checkpoint"
  _write(micro, tmp_path, "oracle", num_decoder_layers=2)
  _assert_config_error(
    micro,
    tmp_path,
    "teacher.model.d_model: 16, but 32 in",
    "teacher.model.d_ff: 32, but 48 in",
    "oracle.model.num_decoder_layers: 1, but 2 in",
  )


def test_missing_checkpoint_names_the_field(micro, tmp_path):
  micro.student.checkpoint = str(tmp_path / "nowhere")
  _assert_config_error(micro, tmp_path, "student.checkpoint:", "is not a directory")
  os.makedirs(tmp_path / "nowhere")
  _assert_config_error(micro, tmp_path, "student.checkpoint:", "config.json not found")


def test_mis_shaped_tensor_names_the_parameter(micro, tmp_path):
  from safetensors.numpy import load_file, save_file

  _write(micro, tmp_path, "student")
  weights = os.path.join(micro.student.checkpoint, "model.safetensors")
  state = load_file(weights)
  key = "decoder.block.0.layer.2.DenseReluDense.wo.weight"
  state[key] = state[key][:, :-1]
  save_file(state, weights)
  config_lib.validate(micro)  # config.json still fits: the shapes are checked at load time
  typed, programs = _programs(micro)
  with pytest.raises(
    ValueError,
    match=rf"student\.checkpoint = .* does not fit student\.model: model_type = 't5' in .*: "
    rf"{key}: shape \(16, 31\), expected \(16, 32\)",
  ):
    stage1.initial_params(typed, "student", programs, jax.random.PRNGKey(0))


def test_synthetic_vocabulary_must_equal_every_embedding(micro):
  assert SyntheticVocabulary(16).fits(16) and not SyntheticVocabulary(16).fits(32)
  assert SyntheticVocabulary(16).decode([5, 3, 1, 7, 0]) == "<5> <3>"
  micro.oracle.model.vocab_size = 32
  with pytest.raises(config_lib.ConfigError, match=r"oracle\.model\.vocab_size: 32 differs"):
    config_lib.validate(micro)


def _seqio_task(micro, **task):
  micro.task.update({"source": "seqio", "name": "xsum", **task})
  return micro


def test_sentencepiece_vocabulary_checks(micro, tmp_path):
  pytest.importorskip("sentencepiece")
  from th_distill.data.vocabularies import SentencePieceVocabulary

  path = real_task_data.train_sentencepiece(tmp_path)
  vocab = SentencePieceVocabulary(path)
  text = "summarize: the council said"
  assert vocab.decode(vocab.encode(text) + [1, 5, 6]) == text
  # 16 embedding rows (micro) cannot hold 256 pieces.
  _assert_config_error(
    _seqio_task(micro, vocabulary=path),
    tmp_path,
    f"task.vocab_size: 16 embedding rows (every model's vocab_size) cannot "
    f"hold the {vocab.vocab_size} ids of {path}",
  )


def test_real_task_fields_are_checked(micro, tmp_path):
  _assert_config_error(
    _seqio_task(micro, name="cnn"),
    tmp_path,
    "task.name: 'cnn' is not one of",
    "task.vocabulary: No SentencePiece model",
  )
  _assert_config_error(
    _seqio_task(micro, name="natural_instructions", data_dir=str(tmp_path)),
    tmp_path,
    "task.data_dir:",
    "holds no task JSON files",
  )
  micro.task.update(name="wmt14_en_de", data_dir=str(tmp_path / "absent"))
  _assert_config_error(
    micro, tmp_path, "task.data_dir:", "is not a directory", "tfds build wmt14_translate/de-en"
  )
  micro.task.source = "tfds"
  _assert_config_error(
    micro, tmp_path, "task.source: must be one of ('synthetic', 'seqio', 'prompt_file')"
  )
