"""th_distill.planning.plan compiles the decoder-only paper-shaped config
(configs/xsum_qwen_1p5b_to_0p5b.py: Qwen2.5-3B / 1.5B / 0.5B shapes, XSum lengths) for 16 forced
CPU devices, every program, with the parameters split as the rules say.

As in test_plan.py the compilation runs in a subprocess (this file as a script, with
XLA_FLAGS=--xla_force_host_platform_device_count=16) and every model keeps its real widths,
heads, vocabulary and lengths with its depth cut to `LAYERS`, so that it compiles in a minute.
"""

import json
import os
import subprocess
import sys

import pytest

from th_distill import config as config_lib
from th_distill.config.run_config import RunConfig
from th_distill.models import module_of, param_count
from th_distill.partitioning import boxed_param_shapes
from th_distill.planning import memory, plan, program_shapes
from th_distill.planning.compiled import ProgramPlan

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "xsum_qwen_1p5b_to_0p5b"
LAYERS = 2
MESH = (1, 8, 2)


def planned_config():
  config = plan.planning_config(
    config_lib.load_config_file(os.path.join(REPO, "configs", f"{NAME}.py"))
  )
  for model in ("oracle", "teacher", "student"):
    config[model].model.num_layers = LAYERS
  return config


def _compile_on_16_devices(out_path: str) -> None:
  import jax  # noqa: F401  (the backend starts with the forced devices)

  config = planned_config()
  plans = plan.plan(config, MESH)
  typed = RunConfig.from_config(config)
  dropped = {
    name: plan.dropped_axes(
      module_of(typed.model(name)), dict(zip(("data", "fsdp", "model"), MESH))
    )
    for name in ("oracle", "teacher", "student")
  }
  with open(out_path, "w") as f:
    json.dump({"programs": {p.name: p.__dict__ for p in plans}, "dropped": dropped}, f)


def test_the_config_has_the_published_shapes():
  """Qwen2.5's published parameter counts (tied embeddings, qkv biases), at full depth."""
  config = RunConfig.from_config(
    plan.planning_config(config_lib.load_config_file(os.path.join(REPO, "configs", f"{NAME}.py")))
  )
  counts = {
    name: param_count(boxed_param_shapes(module_of(config.model(name))))
    for name in ("oracle", "teacher", "student")
  }
  assert counts == {"oracle": 3_085_938_688, "teacher": 1_543_714_304, "student": 494_032_768}


@pytest.mark.slow
def test_the_decoder_paper_config_compiles_on_16_devices(tmp_path):
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
  assert compiled["dropped"] == {"oracle": [], "teacher": [], "student": []}
  programs = compiled["programs"]
  assert list(programs) == list(program_shapes.PROGRAMS)
  for name, p in programs.items():
    assert p["argument_bytes"] > 0 and p["temp_bytes"] > 0, name
    assert p["full_remats"] == 0, name
    assert p["collectives"]["all-gather"][0] > 0, name  # fsdp-split weights are gathered
  # The SFT step has no loop: XLA's FLOPs are the config's analytic count plus element-wise work.
  ratio = programs["teacher_sft_step"]["xla_flops"] / programs["teacher_sft_step"]["model_flops"]
  assert 1.0 < ratio < 1.05, ratio
  # th_distill.planning.memory's estimates against XLA's peaks (docs/scaling.md: the decoder's
  # distillation step is under-estimated by about a quarter on the CPU compiler).
  estimates = memory.program_estimates(RunConfig.from_config(planned_config()), MESH)
  for name, low, high in (("distill_step", 0.6, 1.25), ("teacher_sft_step", 0.75, 1.25)):
    step = ProgramPlan(**{**programs[name], "collectives": {}})
    ratio = estimates[name]["total, all gathered"] * memory.GIB / step.total_bytes
    assert low < ratio < high, (name, ratio)


if __name__ == "__main__":
  sys.path.insert(0, REPO)
  _compile_on_16_devices(sys.argv[1])
