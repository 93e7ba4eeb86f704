"""th_distill.planning.plan: the paper's programs lowered and compiled for simulated meshes (no parameter
allocated), the parameter layout the rules promise, XLA's memory beside th_distill.planning.memory's, and
the command's one-line refusals.

The 16-device compilations run in a subprocess (this file as a script, with
XLA_FLAGS=--xla_force_host_platform_device_count=16), so the rest of the suite keeps one device.
Model shapes are the paper's (d_model, heads, d_ff, vocabulary, lengths, batches); only the layer
counts are cut to 2 + 2 so that a program compiles in seconds on a laptop CPU.
"""

import functools
import json
import os
import subprocess
import sys

import pytest

from th_distill import config as config_lib
from th_distill.config.run_config import RunConfig
from th_distill.models import T5, t5_config
from th_distill.planning import memory, plan, program_shapes
from th_distill.planning.compiled import ProgramPlan, collectives

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_CONFIGS = ("xsum_large_to_base", "wmt", "natural_instructions")
LAYERS = 2  # encoder and decoder layers of every model in the compiled tests
MESH = (1, 8, 2)  # 16 devices: fsdp and model parallelism together
FSDP = (4, 8, 16)  # the distillation step on (1, f, 1) for each f


def paper_config(name: str):
  """A paper config as `th_distill.planning.plan` plans it, with every model cut to `LAYERS` + `LAYERS`."""
  config = plan.planning_config(
    config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
  )
  for model in ("oracle", "teacher", "student"):
    config[model].model.update(num_encoder_layers=LAYERS, num_decoder_layers=LAYERS)
  return config


def _compile_on_16_devices(out_path: str) -> None:
  """Run as a script under 16 forced devices: writes {config: {programs, layouts, fsdp}}."""
  import jax  # noqa: F401  (the backend starts with the forced devices)

  from th_distill import partitioning
  from th_distill.training.program_builders import Models

  # A model's parameter shapes depend on the model alone: traced once per model rather than at
  # every use (a plan asks for each model's shapes many times, and the configs share models).
  partitioning.boxed_param_shapes = functools.cache(partitioning.boxed_param_shapes)
  plan.boxed_param_shapes = partitioning.boxed_param_shapes
  partitioner = partitioning.Partitioner(partitioning.make_mesh(*MESH))

  @functools.cache
  def layout(model):
    """{parameter: [global shape, shard shape]} as the run places them."""
    return {
      jax.tree_util.keystr(path): [list(s.shape), list(s.sharding.shard_shape(s.shape))]
      for path, s in jax.tree_util.tree_leaves_with_path(partitioner.abstract_params(model))
    }

  results = {}
  for name in PAPER_CONFIGS:
    config = paper_config(name)
    plans = plan.plan(config, MESH)
    models = Models.from_config(RunConfig.from_config(config))
    layouts = {model: layout(getattr(models, model)) for model in ("oracle", "teacher", "student")}
    results[name] = {"programs": {p.name: p.__dict__ for p in plans}, "layouts": layouts}
  config = paper_config("xsum_large_to_base")
  results["fsdp"] = {f: plan.plan(config, (1, f, 1), ["distill_step"])[0].__dict__ for f in FSDP}
  with open(out_path, "w") as f:
    json.dump(results, f)


@pytest.mark.slow
def test_paper_configs_compile_on_simulated_meshes(tmp_path):
  """One test, so that the compilations (minutes) run once, on one worker, under `-n 2`."""
  from conftest import xla_flags

  out = tmp_path / "plans.json"
  env = {
    **os.environ,
    "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=16"),
    "JAX_PLATFORMS": "cpu",
  }
  subprocess.run(
    [sys.executable, os.path.abspath(__file__), str(out)],
    check=True,
    env=env,
    cwd=REPO,
    timeout=1800,
  )
  compiled = json.loads(out.read_text())
  for name in PAPER_CONFIGS:
    _check_programs(compiled, name)
    _check_layout(compiled, name)
  _check_memory_against_fsdp(compiled)


def _check_programs(compiled, name):
  """Every program compiled, split its weights over fsdp, and counted the FLOPs expected."""
  programs = compiled[name]["programs"]
  assert list(programs) == list(program_shapes.PROGRAMS)
  for program, p in programs.items():
    assert p["argument_bytes"] > 0 and p["temp_bytes"] > 0, program
    assert p["full_remats"] == 0, program
    # Parameters are split over fsdp: weights are gathered, and gradients reduced.
    assert p["collectives"]["all-gather"][0] > 0, program
  # XLA's FLOP count of the SFT step (no loop) is th_distill.planning.flops' plus the element-wise work.
  # XLA counts a loop body once: with sequence_chunks = 4 the distillation step and the
  # evaluator lose half of the logits' FLOPs (a large share with 2 + 2 layers and WMT's 80
  # tokens), and the samplers all but one decoding step.
  ratios = {p: programs[p]["xla_flops"] / programs[p]["model_flops"] for p in programs}
  assert 1.0 < ratios["teacher_sft_step"] < 1.01, ratios
  assert 0.85 < ratios["distill_step"] < 1.0 and 0.85 < ratios["evaluator"] < 1.0, ratios
  assert ratios["oracle_sampling"] < 1.0 and ratios["online_sampler"] < 1.0, ratios


def _check_layout(compiled, name):
  """Every parameter is split as the rules say (no large tensor left whole)."""
  config = paper_config(name)
  models = {
    m: T5(config_lib.to_t5_config(config[m].model)) for m in ("oracle", "teacher", "student")
  }
  mesh_shape = dict(zip(("data", "fsdp", "model"), MESH))
  for model, layout in compiled[name]["layouts"].items():
    assert plan.dropped_axes(models[model], mesh_shape) == [], model
    for path, (shape, shard) in layout.items():
      size, part = 1, 1
      for d, s in zip(shape, shard):
        size, part = size * d, part * s
      # Every tensor of a million elements or more is split 16 ways (fsdp x model) when it has
      # an embed and a heads/mlp/vocab dimension, 8 ways (fsdp) otherwise: never whole.
      if size >= 2**20:
        assert part * 8 <= size, (model, path, shape, shard)


def _check_memory_against_fsdp(compiled):
  """The distillation step's memory per device falls as fsdp grows, within 25% of memory.py."""
  totals = [
    compiled["fsdp"][str(f)]["argument_bytes"] + compiled["fsdp"][str(f)]["temp_bytes"]
    for f in FSDP
  ]
  assert totals == sorted(totals, reverse=True) and totals[-1] < totals[0] / 2, totals
  config = paper_config("xsum_large_to_base")
  for f in FSDP:
    p = ProgramPlan(**{**compiled["fsdp"][str(f)], "collectives": {}})
    estimate = memory.estimate(config, (1, f, 1))["total, all gathered"] * memory.GIB
    assert abs(estimate / p.total_bytes - 1) < 0.25, (f, estimate, p.total_bytes)


def test_collectives_are_counted_with_their_result_bytes():
  hlo = "\n".join(
    [
      "  %all-gather.1 = f32[16,64]{1,0} all-gather(f32[2,64]{1,0} %p), dimensions={0}",
      "  %ar = (bf16[8]{0}, f32[4,4]{1,0}) all-reduce(%a, %b), to_apply=%add",
      "  %ags = (f32[2,8]{1,0}, f32[16,8]{1,0}) all-gather-start(f32[2,8]{1,0} %q)",
      "  %agd = f32[16,8]{1,0} all-gather-done(%ags)",
      "  %fusion = f32[4]{0} fusion(%all-reduce.3), kind=kLoop",
    ]
  )
  found = collectives(hlo)
  assert found["all-gather"] == (2, 16 * 64 * 4 + 16 * 8 * 4)
  assert found["all-reduce"] == (1, 8 * 2 + 16 * 4)
  assert found["reduce-scatter"] == (0, 0)


def test_a_rule_that_cannot_apply_is_named():
  base = T5(t5_config("base", vocab_size=32128))  # 12 heads do not split 8 ways
  problems = plan.dropped_axes(base, {"data": 1, "fsdp": 1, "model": 8})
  assert problems and all("heads not split over model (8)" in p for p in problems)
  assert plan.dropped_axes(base, {"data": 1, "fsdp": 16, "model": 4}) == []


def test_paper_configs_plan_without_their_data_files():
  for name in PAPER_CONFIGS:
    config = paper_config(name)
    config_lib.validate(config)  # no vocabulary, TFDS directory or checkpoint needed
    assert (config.task.prompt_length, config.task.vocab_size) == (
      config_lib.load_config_file(f"{REPO}/configs/{name}.py").task.prompt_length,
      32128,
    )


def _plan_cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "th_distill.planning.plan", *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize(
  "args, message",
  [
    (["--mesh=1,16,2", "--devices=16"], "--mesh=1,16,2 uses 32 devices, but the target has 16"),
    (["--mesh=1,64,1"], "data x fsdp = 64 must divide student.batch_size = 32"),
    (["--devices=48"], "data x fsdp = 48 does not divide teacher.batch_size = 32"),
    (["--mesh=1,1"], "--mesh=1,1: must be three positive integers"),
  ],
)
def test_a_mesh_that_does_not_fit_is_refused_in_one_line(args, message):
  result = _plan_cli("--config=configs/xsum_large_to_base.py", *args)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert lines[0].startswith("error: ") and message in lines[0], lines[0]


@pytest.mark.slow
def test_the_command_prints_and_writes_the_plan(tmp_path):
  out = tmp_path / "plan.json"
  result = _plan_cli(
    "--config=configs/tiny.py",
    "--devices=8",
    "--config.mesh.fsdp=4",
    "--programs=distill_step",
    f"--json={out}",
  )
  assert result.returncode == 0, result.stderr
  assert "on mesh (data, fsdp, model) = (2, 4, 1)" in result.stdout
  (row,) = [line for line in result.stdout.splitlines() if line.startswith("| distill_step")]
  assert "all-gather" in row and "MiB" in row
  written = json.loads(out.read_text())
  assert written["mesh"] == [2, 4, 1] and written["programs"][0]["name"] == "distill_step"


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  _compile_on_16_devices(sys.argv[1])
