"""The evaluator and the samplers split to fit a device (`programs.MemoryLayout`): the same numbers
whatever the split.

Evaluation: each call's sums are float32 sums over its rows and positions, added over calls in
float64 on the host; another split adds the same terms in another order, so the metrics agree to
float32 rounding (relative 1e-5), not bit for bit. Every split also agrees with a float64 numpy
evaluation of the models' own logits (the reference). Sampling: each row keeps the key it has in
one call, so a split sampler returns the same tokens.
"""

import flax.linen as nn
import jax
import numpy as np
import pytest

from th_distill.config.run_config import RunConfig
from th_distill.data.batch import Batch
from th_distill.partitioning import Partitioner, init_params, make_mesh
from th_distill.training import program_builders, programs
from th_distill.training.programs import MemoryLayout
from th_distill.training.teacher_forcing import forward

ROWS = 11  # not a multiple of any split below: the last call is short
WHOLE = MemoryLayout(sample_rows=None, eval_rows=16, eval_chunks=1)
SPLITS = (
  MemoryLayout(sample_rows=4, eval_rows=3, eval_chunks=1),  # rows: 3 + 3 + 3 + 2
  MemoryLayout(sample_rows=4, eval_rows=16, eval_chunks=2),  # positions: 2 chunks of 2
  MemoryLayout(sample_rows=4, eval_rows=4, eval_chunks=4),  # both
)


@pytest.fixture(scope="module")
def setup():
  from conftest import micro_config

  config = RunConfig.from_config(micro_config())
  models = program_builders.Models.from_config(config)
  params = {
    name: nn.unbox(init_params(getattr(models, name), jax.random.PRNGKey(i)))
    for i, name in enumerate(("student", "teacher", "oracle"))
  }
  rng = np.random.default_rng(0)
  shape = (ROWS, config.task.response_length)
  data = {
    "prompts": rng.integers(2, config.task.vocab_size, (ROWS, config.task.prompt_length)),
    "prompt_mask": np.ones((ROWS, config.task.prompt_length), bool),
    "responses": rng.integers(2, config.task.vocab_size, shape),
    "mask": np.ones(shape, np.float32),
  }
  data["prompts"], data["responses"] = (data[k].astype(np.int32) for k in ("prompts", "responses"))
  data["prompt_mask"][4, 2:] = False
  data["mask"][3, 2:] = 0.0
  data["mask"][7, :] = 0.0  # a row with no token: not a sequence
  return config, models, params, data


def _built(setup, layout):
  config, models, _, _ = setup
  return programs.Programs(models, config.program_settings, Partitioner(make_mesh()), layout)


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _numpy_metrics(setup, prefix):
  """The evaluator's per-token and per-sequence means in float64 numpy from the models' logits."""
  _, models, params, data = setup
  batch = Batch.of_arrays(data)
  log = {name: _log_softmax(forward(getattr(models, name), params[name], batch)) for name in params}
  mask = data["mask"].astype(np.float64)

  def kl(a, b):
    return (np.exp(a) * (a - b)).sum(-1)

  values = {}
  for ref, model in (("proxy", "teacher"), ("golden", "oracle")):
    p, q = log[model], log["student"]
    m = np.log(0.5 * np.exp(p) + 0.5 * np.exp(q))
    values[f"{ref}/fkl"], values[f"{ref}/rkl"] = kl(p, q), kl(q, p)
    values[f"{ref}/jsd"] = 0.5 * kl(p, m) + 0.5 * kl(q, m)
  for name in params:
    values[f"entropy/{name}"] = -(np.exp(log[name]) * log[name]).sum(-1)
  tokens, sequences = mask.sum(), (mask.max(-1) > 0).sum()
  out = {}
  for name, value in values.items():
    total = (value * mask).sum()
    out[f"{prefix}/{name}"], out[f"{prefix}/{name}_seq"] = total / tokens, total / sequences
  return out


@pytest.mark.parametrize("layout", SPLITS)
def test_a_split_evaluation_gives_the_whole_evaluations_numbers(setup, layout):
  _, _, params, data = setup
  args = (params["student"], params["teacher"], params["oracle"], data, "eval")
  whole = _built(setup, WHOLE).evaluator("student")(*args)
  split = _built(setup, layout).evaluator("student")(*args)
  reference = _numpy_metrics(setup, "eval")
  assert sorted(split) == sorted(whole) == sorted(reference)
  for name, value in reference.items():
    assert whole[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert split[name] == pytest.approx(whole[name], rel=1e-5, abs=1e-7), name


@pytest.mark.parametrize("reference_bytes", [1 << 20, 0])  # references kept, or recomputed
def test_a_fixed_set_split_by_rows_gives_the_whole_evaluations_numbers(setup, reference_bytes):
  _, _, params, data = setup
  whole = _built(setup, WHOLE).evaluator("student")(
    params["student"], params["teacher"], params["oracle"], data, "set"
  )
  layout = MemoryLayout(None, 3, 1, reference_bytes)
  evaluate = _built(setup, layout).set_evaluator(
    "student", params["teacher"], params["oracle"], data
  )
  split = evaluate(params["student"], "set")
  for name, value in whole.items():
    assert split[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


def test_a_split_sampler_draws_the_same_samples(setup):
  _, _, params, data = setup
  rng = jax.random.PRNGKey(5)
  prompts = (data["prompts"], data["prompt_mask"])
  whole = _built(setup, WHOLE).host_sampler("oracle")(params["oracle"], *prompts, rng)
  split = _built(setup, SPLITS[0]).host_sampler("oracle")(params["oracle"], *prompts, rng)
  assert whole[0].shape == (ROWS, 4)
  for a, b in zip(whole, split):
    np.testing.assert_array_equal(a, b)
