"""Mesh resolution, logical-axis rules, row padding and the memory estimate (one device)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from th_distill import partitioning
from th_distill.models import T5, param_count, t5_config
from th_distill.planning import memory, weights


def test_mesh_shape_takes_the_remaining_devices_and_names_bad_shapes():
  assert partitioning.resolve_mesh_shape(-1, 2, 2, 16) == (4, 2, 2)
  assert partitioning.resolve_mesh_shape(2, -1, 1, 8) == (2, 4, 1)
  for shape, match in (
    ((3, 1, 1), "needs 3 devices"),
    ((-1, -1, 1), "at most one"),
    ((3, -1, 1), "does not divide"),
    ((0, 1, 1), "positive"),
  ):
    with pytest.raises(ValueError, match=match):
      partitioning.resolve_mesh_shape(*shape, 8)


def test_rules_shard_weights_on_fsdp_and_model_and_activations_on_batch():
  mesh = {"data": 2, "fsdp": 4, "model": 2}
  axes = partitioning.mesh_axes
  assert axes(("embed", "mlp"), (64, 128), mesh) == ["fsdp", "model"]
  assert axes(("vocab", "embed"), (32128, 512), mesh) == ["model", "fsdp"]
  # An activation: the batch takes data and fsdp, so embed stays whole.
  assert axes(("batch", "length", "embed"), (16, 8, 64), mesh) == [("data", "fsdp"), None, None]
  # A dimension that the mesh axes do not divide is replicated.
  assert axes(("heads", "kv"), (3, 64), mesh) == [None, None]
  assert axes(("embed", "heads", "kv"), (6, 4, 64), mesh) == [None, "model", None]


def test_pad_rows_adds_zero_rows_up_to_a_multiple():
  arrays = {"prompts": np.ones((5, 3), np.int32), "mask": np.ones((5, 2), np.float32)}
  padded, rows = partitioning.pad_rows(arrays, 4)
  assert rows == 5 and padded["prompts"].shape == (8, 3) and padded["mask"].shape == (8, 2)
  assert not padded["mask"][5:].any() and padded["prompts"].dtype == np.int32
  assert partitioning.pad_rows(arrays, 5)[0] is arrays


def test_partitioner_on_one_device_places_batches_and_names_bad_sizes():
  partitioner = partitioning.Partitioner(partitioning.make_mesh(devices=jax.devices()[:1]))
  batch = partitioner.shard_batch({"x": np.arange(6).reshape(3, 2)})
  np.testing.assert_array_equal(batch["x"], np.arange(6).reshape(3, 2))
  model = T5(t5_config("tiny", vocab_size=32))
  params = partitioner.init_params(model, jax.random.PRNGKey(0))
  assert param_count(params) == param_count(nn.unbox(partitioning.boxed_param_shapes(model)))
  assert partitioner.cast(model, params, "bfloat16")["logits_kernel"].dtype == "bfloat16"


def test_memory_estimate_of_parameters_follows_the_shardings():
  cfg = t5_config("tiny", vocab_size=64)
  count = param_count(nn.unbox(partitioning.boxed_param_shapes(T5(cfg))))
  one = {"data": 1, "fsdp": 1, "model": 1}
  assert weights.param_bytes(cfg, one, "float32") == 4 * count
  assert weights.param_bytes(cfg, one, "bfloat16") == 2 * count
  # Data parallelism replicates; fsdp x model divides every weight that they divide.
  assert weights.param_bytes(cfg, {**one, "data": 8}, "float32") == 4 * count
  sharded = weights.param_bytes(cfg, {"data": 1, "fsdp": 4, "model": 2}, "float32")
  assert 4 * count / 8 <= sharded < 4 * count / 4


def test_memory_table_of_the_paper_setup():
  config = memory.paper_xsum_config()
  one, pod = memory.estimate(config, (1, 1, 1)), memory.estimate(config, (1, 16, 2))
  # T5-base student: 248M float32 parameters x (params, grads, two Adam moments).
  assert 3.6 < one["student params + grads + Adam"] < 3.8
  assert 10.5 < one["oracle params"] < 10.8  # T5-XL, 2.85B parameters in float32
  assert pod["total"] < one["total"] / 16
  assert "| (1, 16, 2) | defaults |" in memory.table(config, [(1, 16, 2)])


TRACES = []


def _scaled(x, factor):
  TRACES.append(factor)  # runs once per trace
  return x * factor


def test_jit_shares_a_program_only_between_equal_functions_settings_and_rules():
  x = np.ones((4,), np.float32)
  TRACES.clear()

  def build(factor, rules=partitioning.DEFAULT_RULES):
    partitioner = partitioning.Partitioner(partitioning.make_mesh(), rules)
    return partitioner.jit(
      _scaled,
      in_shardings=(partitioner.replicated,),
      out_shardings=partitioner.replicated,
      static=(factor,),
    )

  np.testing.assert_array_equal(build(2.0)(x), 2 * x)
  np.testing.assert_array_equal(build(2.0)(x), 2 * x)  # another run, same settings: reused
  assert TRACES == [2.0]
  np.testing.assert_array_equal(build(3.0)(x), 3 * x)  # a changed setting: traced anew
  build(3.0, rules=partitioning.DEFAULT_RULES[1:])(x)  # other rules: traced anew
  assert TRACES == [2.0, 3.0, 3.0]
