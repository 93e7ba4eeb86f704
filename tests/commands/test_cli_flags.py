"""The command-line modules define their flags in `main()`, not on import: one process can import
all of them (no `DuplicateFlagError`), and each command still parses its own flags."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Every `python -m th_distill.X` command and a value for each of its flags.
COMMANDS = {
  "main": ("--config=configs/tiny.py", "--workdir=/tmp/th"),
  "planning.memory": ("--config=configs/tiny.py", "--mesh=1,1,1", "--mesh=2,1,1"),
  "planning.plan": (
    "--config=configs/tiny.py",
    "--mesh=1,1,1",
    "--devices=1",
    "--json=/tmp/plan.json",
    "--programs=distill_step",
  ),
  "study": ("--config=configs/studies/regimes.py", "--workdir=/tmp/th"),
  "detector_eval": (
    "--workdir=/tmp/th",
    "--calibration_seeds=0",
    "--test_seeds=1",
    "--threshold_pct=5",
    "--min_step=0",
    "--out=/tmp/d.json",
  ),
}

_IMPORT_ALL = f"""
from absl import flags
before = set(flags.FLAGS)
import th_distill.cli  # --traceback, shared by every command
shared = set(flags.FLAGS) - before
{"; ".join(f"import th_distill.{module}" for module in COMMANDS)}
new = set(flags.FLAGS) - before - shared
# Libraries (e.g. Orbax) may define flags of their own on import; only ours count.
print(sorted(name for name in new
             if flags.FLAGS.find_module_defining_flag(name, "").startswith("th_distill")))
"""


def test_importing_every_command_module_defines_no_flag():
  result = subprocess.run(
    [sys.executable, "-c", _IMPORT_ALL], cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]"


def test_each_command_parses_its_own_flags():
  """Every flag given a value parses; the positional argument after them is then refused by the
  command's body (`cli.reject_arguments`) before any work."""
  running = {
    module: subprocess.Popen(
      [sys.executable, "-m", f"th_distill.{module}", *args, "positional"],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for module, args in COMMANDS.items()
  }
  for module, process in running.items():
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2, (module, err)
    assert err.startswith("error: unexpected arguments ['positional']"), (module, err)
