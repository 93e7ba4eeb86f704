"""Every shipped config fits the memory its docstring claims.

Each configs/*.py docstring says "Memory: plan for N GB per accelerator (or per CPU device) on
mesh (data, fsdp, model) = (d, f, m)". The config is planned for that device as a run plans it
(`planning.preview`: `memory.memory_layout` splits the samplers' and the evaluator's calls, the
regimes side by side as `mesh.regimes_side_by_side` chooses for the platform), and every
program's estimate must fit N GB. Shapes only: nothing is traced or compiled.
"""

import ast
import glob
import os
import re
import tempfile

import pytest
from hf_artifacts import write_qwen25_configs

from th_distill import config as config_lib
from th_distill.config.run_config import RunConfig
from th_distill.planning import memory, plan
from th_distill.training.programs import MemoryLayout

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
CLAIM = re.compile(
  r"Memory: plan for (?P<gb>\d+) GB per (?P<device>accelerator|CPU device) on mesh "
  r"\(data, fsdp, model\) = \((?P<mesh>\d+, \d+, \d+)\)"
)


def claim(path: str) -> tuple[float, str, tuple[int, ...]]:
  """(GiB per device, platform, mesh) that the config file's docstring names."""
  with open(path) as f:
    doc = " ".join(ast.get_docstring(ast.parse(f.read())).split())
  found = CLAIM.search(doc)
  assert found, f"{os.path.basename(path)}: its docstring must say '{CLAIM.pattern}'"
  platform = "cpu" if found["device"] == "CPU device" else "tpu"
  return int(found["gb"]) * 1e9 / memory.GIB, platform, tuple(map(int, found["mesh"].split(",")))


def _loaded(path: str):
  """The config file at `path`; one whose models are their checkpoints' (configs/your_model.py)
  with the Qwen2.5 3B / 1.5B / 0.5B triple its docstring plans for (their config.json files,
  written here)."""
  config = config_lib.load_config_file(path)
  if any(config[m].model.get("family") == "checkpoint" for m in ("oracle", "teacher", "student")):
    for name, directory in write_qwen25_configs(tempfile.mkdtemp()).items():
      config[name].checkpoint = directory
  return config


def planned(path: str) -> dict[str, dict[str, float]]:
  """GiB per device of every program of the config as a run on its claimed device plans them."""
  device_gib, platform, mesh = claim(path)
  config = RunConfig.from_config(plan.planning_config(_loaded(path)))
  programs = memory.program_estimates(config, mesh, memory.memory_layout(config, mesh, device_gib))
  at_once = config.mesh.regimes_side_by_side(len(config.regimes), platform, 1)
  programs["distill_step side by side"] = memory.side_by_side(programs["distill_step"], at_once)
  return programs


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_fits_the_device_its_docstring_names(path):
  device_gib = claim(path)[0]
  over = {
    name: round(parts["total"], 2)
    for name, parts in planned(path).items()
    if parts["total"] > device_gib
  }
  assert not over, f"over {device_gib:.1f} GiB per device: {over}"


def test_t5_small_fits_this_24_gb_host_only_with_its_evaluator_split():
  path = os.path.join(REPO, "configs", "t5_small.py")
  device_gib, _, mesh = claim(path)
  config = RunConfig.from_config(config_lib.load_config_file(path))
  whole = memory.program_estimates(config, mesh, MemoryLayout.of_config(config))
  layout = memory.memory_layout(config, mesh, device_gib)
  split = memory.program_estimates(config, mesh, layout)
  # 256 rows x 128 positions x 32,128 entries of logits: ~23.5 GiB of them alone.
  assert whole["evaluator"]["total"] > device_gib and whole["oracle_sampling"]["total"] > device_gib
  assert split["evaluator"]["total"] <= memory.LAYOUT_SHARE * device_gib
  assert split["oracle_sampling"]["total"] <= memory.LAYOUT_SHARE * device_gib
  assert layout.eval_rows < config.eval.batch_size and layout.sample_rows is not None


@pytest.mark.parametrize("name", ["tiny", "tiny_decoder"])
def test_a_config_that_fits_as_written_is_not_split(name):
  """The default study runs as it always has: same calls, same numbers."""
  path = os.path.join(REPO, "configs", f"{name}.py")
  device_gib, _, mesh = claim(path)
  config = RunConfig.from_config(config_lib.load_config_file(path))
  layout = memory.memory_layout(config, mesh, device_gib)
  own = MemoryLayout.of_config(config)
  assert (layout.sample_rows, layout.eval_rows, layout.eval_chunks) == (
    own.sample_rows,
    own.eval_rows,
    own.eval_chunks,
  )


def test_the_evaluator_splits_positions_once_it_is_down_to_a_row_per_device():
  path = os.path.join(REPO, "configs", "xsum_large_to_base.py")
  config = RunConfig.from_config(plan.planning_config(config_lib.load_config_file(path)))
  mesh = (1, 16, 1)
  layout = memory.memory_layout(config, mesh, 2.0)
  assert layout.eval_rows == 16 and layout.eval_chunks > config.sequence_chunks
  assert config.task.response_length % layout.eval_chunks == 0
  assert layout.reference_bytes == 0  # nothing to spare beside the programs: recomputed
