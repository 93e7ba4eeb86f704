"""Runs the micro pipeline once per mesh given on the command line, in one process.

Used by test_sharding.py under `XLA_FLAGS=--xla_force_host_platform_device_count=8`:
  python tests/run_meshes.py WORKDIR_ROOT 8,1,1 2,2,2 1,4,2
writes WORKDIR_ROOT/<data>x<fsdp>x<model>/ (the usual workdir of each run).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
from conftest import micro_config  # noqa: E402

from th_distill import experiment, partitioning  # noqa: E402
from th_distill.config.run_config import RunConfig
from th_distill.rundir import checkpoints
from th_distill.training.program_builders import Models  # noqa: E402

REGIMES = ("offline", "mixture")


def sharding_config(mesh: tuple[int, int, int]):
  """The micro configuration on `mesh`, with a bfloat16-free setup so results are comparable."""
  c = micro_config()
  c.regimes = REGIMES
  c.mesh.data, c.mesh.fsdp, c.mesh.model = mesh
  return c


if __name__ == "__main__":
  root = sys.argv[1]
  for spec in sys.argv[2:]:
    mesh = tuple(int(x) for x in spec.split(","))
    config = sharding_config(mesh)
    workdir = os.path.join(root, "x".join(map(str, mesh)))
    experiment.run(config, workdir)
    # How the student's parameters were laid out: {name: [global shape, shape of one shard]}.
    partitioner = partitioning.Partitioner.from_config(config.mesh)
    student = Models.from_config(RunConfig.from_config(config)).student
    shapes = partitioner.abstract_params(student)
    layout = {
      jax.tree_util.keystr(path): [list(s.shape), list(s.sharding.shard_shape(s.shape))]
      for path, s in jax.tree_util.tree_leaves_with_path(shapes)
    }
    checkpoints.write_json(os.path.join(workdir, "student_param_layout.json"), layout)
