"""Every config file in configs/ runs as written: only its *counts* shrink (pool sizes, steps,
batch and evaluation sizes, schedules), never its shapes (vocabulary, lengths, model sizes).

The CPU configs (tiny, tiny_overfit, tiny_strong_teacher, tiny_decoder) sample their prompt
pools, build and initialise every model, take one teacher SFT step and one distillation step at
their real shapes.

The accelerator configs (t5_small: T5-base oracle and teacher, a T5-small student; the paper's
xsum_large_to_base, wmt, natural_instructions: a T5-XL oracle, a T5-large teacher, a T5-base
student, T5's vocabulary; xsum_qwen_1p5b_to_0p5b: Qwen2.5 3B / 1.5B / 0.5B decoder-only shapes)
are for accelerators: initialising t5_small's three models alone takes a minute on a 2-core CPU,
the paper oracles hold 11 GB of float32 parameters, and a real step (a T5-XL forward over 1,152
tokens is ~7 TFLOP) would take minutes. Here they sample their prompt pools from the real (mocked) task at the
real lengths, build each model with abstract shapes (`Partitioner.abstract_params`: the full
models' parameter counts are checked against the published ones) and lower the run's own SFT and
distillation programs for abstract arguments (`.lower`: traced, not compiled), every stack cut
to `LOWERED_LAYERS` layers as th_distill.planning's compiled tests cut them: a stack's layers
are identical, so every shape of the real run is still met (the widths, heads, vocabulary,
lengths, batch, dtypes, a scan over layers) for a fraction of the tracing (a 24-layer
unrolled T5-XL traced for ~30 s); nothing is computed.
"""

import contextlib
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from th_distill import config as config_lib
from th_distill.config.run_config import RunConfig
from th_distill.config.settings import make_optimizer
from th_distill.data.batch import PromptSet
from th_distill.data.pools import prompt_pools
from th_distill.models import param_count
from th_distill.partitioning import Partitioner
from th_distill.stages.sft import train_sft
from th_distill.training import program_builders as program_lib
from th_distill.training.program_builders import Models
from th_distill.training.programs import Programs
from th_distill.training.steps import Batch, create_train_state

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU_CONFIGS = ("tiny", "tiny_overfit", "tiny_strong_teacher", "tiny_decoder")
ACCELERATOR_CONFIGS = (
  "t5_small",
  "xsum_large_to_base",
  "wmt",
  "natural_instructions",
  "xsum_qwen_1p5b_to_0p5b",
)
BATCH = 1  # rows of the SFT and distillation batches
LOWERED_LAYERS = 2  # layers of each stack of the accelerator configs' lowered programs
# Published parameter counts, in millions: T5 v1.1 (untied embeddings, 32,128 rows) and
# Qwen2.5 (tied embeddings, 151,936 rows).
T5_MILLIONS = {"oracle": 2849.8, "teacher": 783.2, "student": 247.6}  # xl, large, base
MILLIONS = {
  "t5_small": {"oracle": 247.6, "teacher": 247.6, "student": 77.0},  # base, base, small
  **{name: T5_MILLIONS for name in ("xsum_large_to_base", "wmt", "natural_instructions")},
  "xsum_qwen_1p5b_to_0p5b": {
    "oracle": 3085.9,
    "teacher": 1543.7,
    "student": 494.0,
  },  # 3B, 1.5B, 0.5B
}


# Configs whose models are their checkpoints' (model.family = 'checkpoint'): run on real
# checkpoint files, shrunk, by tests/commands/test_own_model.py.
CHECKPOINT_CONFIGS = ("your_model",)


def test_every_config_file_is_covered():
  files = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py"))}
  assert files == set(CPU_CONFIGS + ACCELERATOR_CONFIGS + CHECKPOINT_CONFIGS)


def _load(name: str):
  return config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))


def _shrink_counts(config):
  """The config with small counts; every shape (vocab, lengths, models) as written."""
  shapes = (
    config.task.to_dict(),
    {m: config[m].model.to_dict() for m in ("oracle", "teacher", "student")},
  )
  config.prompts.update(num_oracle=8, num_distill=8, num_eval=4)
  config.teacher.update(steps=1, batch_size=BATCH, warmup_steps=0)
  config.student.update(steps=1, sft_steps=1, batch_size=BATCH, warmup_steps=0, micro_batches=1)
  config.offline.num_prompts = 4
  config.eval.update(num_train_prompts=4, batch_size=4)
  config.update(eval_every=1, eval_log_points=0, checkpoint_every=1)
  assert shapes == (
    config.task.to_dict(),
    {m: config[m].model.to_dict() for m in ("oracle", "teacher", "student")},
  )
  return config


def _batch(config, prompts: PromptSet) -> dict[str, np.ndarray]:
  """A (prompt, response) batch at the config's lengths: random responses over its vocabulary."""
  rng = np.random.default_rng(0)
  shape = (len(prompts), config.task.response_length)
  return {
    "prompts": prompts.tokens,
    "prompt_mask": prompts.mask,
    "responses": rng.integers(2, config.task.vocab_size, shape, dtype=np.int32),
    "mask": np.ones(shape, np.float32),
  }


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_cpu_config_takes_one_sft_and_one_distillation_step(name, tmp_path):
  config = config_lib.validate(_shrink_counts(_load(name)))
  partitioner = Partitioner.from_config(config.mesh)
  pools = prompt_pools(config)
  assert {k: v.tokens.shape for k, v in pools.items()} == {
    "oracle": (8, config.task.prompt_length),
    "distill": (8, config.task.prompt_length),
    "eval": (4, config.task.prompt_length),
  }
  models = Models.from_config(config)
  params = {
    m: partitioner.init_params(getattr(models, m), jax.random.PRNGKey(i))
    for i, m in enumerate(("oracle", "teacher", "student"))
  }
  data = _batch(config, pools["oracle"][:BATCH])
  programs = Programs(models, config.program_settings, partitioner)
  teacher, sft = train_sft(
    programs,
    "teacher",
    params["teacher"],
    data,
    config.teacher.sft,
    config.seed,
    jax.random.PRNGKey(3),
    checkpoint_dir=str(tmp_path / "sft"),
    checkpoint_every=config.checkpoint_every,
  )
  assert np.isfinite(sft["sft/loss"])
  state = program_lib.new_train_state(
    partitioner, models.student, params["student"], config.distill.optimizer.build()
  )
  frozen = [
    partitioner.cast(getattr(models, m), p, config.frozen_dtype)
    for m, p in (("teacher", teacher), ("oracle", params["oracle"]))
  ]
  batch = partitioner.shard_batch(Batch(**_batch(config, pools["distill"][:BATCH])))
  step = program_lib.distill_program(models, config.distill, partitioner)
  state, metrics = step(state, *frozen, batch, jax.random.PRNGKey(4))
  assert int(state.step) == 1 and np.isfinite(float(metrics["train/loss"]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ACCELERATOR_CONFIGS)
def test_accelerator_config_lowers_its_steps_for_abstract_shapes(name, tmp_path):
  config = _shrink_counts(_load(name))
  if config.task.source == "seqio":
    pytest.importorskip("seqio")
    import real_task_data

    config.task.vocabulary = real_task_data.train_sentencepiece(tmp_path)
    if config.task.name == "natural_instructions":
      config.task.data_dir = real_task_data.write_natural_instructions(tmp_path / "ni")
    task_data = real_task_data.mocked_tfds()
  else:
    task_data = contextlib.nullcontext()
  if config.task.source == "prompt_file":  # a real tokenizer and prompt file, made here
    from hf_artifacts import CORPUS, write_prompt_file, write_tokenizer

    write_tokenizer(tmp_path / "tokenizer")
    config.task.vocabulary = str(tmp_path / "tokenizer")
    texts = [f"{i}: {text}" for i, text in enumerate(sorted(set(CORPUS)) * 3)]
    config.task.prompt_file = write_prompt_file(tmp_path / "prompts.jsonl", texts)
  # Every field checked as a run would, but the oracle checkpoint (an 11 GB file) it has not.
  checked = config.copy_and_resolve_references()
  checked.oracle.source = "synthetic"
  config_lib.validate(checked)
  with task_data:
    pools = prompt_pools(config)
  assert pools["oracle"].tokens.shape == (8, config.task.prompt_length)

  partitioner = Partitioner.from_config(config.mesh)
  full = Models.from_config(RunConfig.from_config(config))
  millions = {
    m: param_count(partitioner.abstract_params(getattr(full, m))) / 1e6 for m in MILLIONS[name]
  }
  for model, expected in MILLIONS[name].items():
    assert millions[model] == pytest.approx(expected, rel=0.01), millions

  # The programs are lowered with every stack cut to LOWERED_LAYERS layers (see the docstring).
  for m in ("oracle", "teacher", "student"):
    model = config[m].model
    depths = [k for k in ("num_layers", "num_encoder_layers", "num_decoder_layers") if k in model]
    assert depths, m
    model.update(dict.fromkeys(depths, LOWERED_LAYERS))
  typed = RunConfig.from_config(config)
  models = Models.from_config(typed)
  params = {
    m: partitioner.abstract_params(getattr(models, m)) for m in ("oracle", "teacher", "student")
  }

  def abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)

  sft_batch = Batch(**abstract(_batch(config, pools["oracle"][:BATCH])))
  t = config.teacher
  optimizer = make_optimizer(t.learning_rate, t.warmup_steps, t.steps, t.schedule)
  teacher_state = jax.eval_shape(lambda p: create_train_state(p, optimizer), params["teacher"])
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  _, sft = (
    program_lib.sft_program(models.teacher, optimizer, partitioner)
    .lower(teacher_state, sft_batch, key)
    .out_info
  )
  assert sft["sft/loss"].shape == ()

  frozen = [
    jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, config.frozen_dtype), params[m])
    for m in ("teacher", "oracle")
  ]
  distill = typed.distill
  student_state = jax.eval_shape(
    lambda p: create_train_state(p, distill.optimizer.build()), params["student"]
  )
  state, metrics = (
    program_lib.distill_program(models, distill, partitioner)
    .lower(student_state, *frozen, sft_batch, key)
    .out_info
  )
  assert metrics["train/loss"].shape == () and metrics["train/loss"].dtype == jnp.float32
  assert jax.tree_util.tree_map(lambda x: x.shape, state.params) == jax.tree_util.tree_map(
    lambda x: x.shape, params["student"]
  )
