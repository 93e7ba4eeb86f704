r"""The paper's real tasks: where their data lives and how an example becomes a prompt.

TensorFlow-free (the seqio registration is `th_distill.data.seqio_tasks`), so that config
validation can check task names and data directories without importing TensorFlow.

- `xsum`: TFDS `xsum`; prompt `summarize: ` + document; reference: the summary.
- `wmt14_en_de`: TFDS `wmt14_translate/de-en`; prompt `translate English to German: ` + the
  English sentence; reference: the German one.
- `natural_instructions`: the public task JSON files; prompt `Definition: ` + the task's
  definition + `\n\nInput: ` + the instance's input + `\nOutput:`; reference: its first output.

Pools: oracle and distillation prompts come from the `train` split, held-out evaluation prompts
from `validation`. Natural Instructions has no such splits: an instance is in `validation` when
the CRC-32 of its id is 0 mod 20 (5 %, stable across runs and directory contents).
"""

from __future__ import annotations

import dataclasses
import glob
import os


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One task. `tfds_name` is empty for tasks read from local JSON files."""

  tfds_name: str
  prefix: str
  inputs_key: str
  targets_key: str
  build: str  # how to prepare the data where it is missing


TASKS = {
  "xsum": TaskSpec(
    "xsum:1.1.0",
    "summarize: ",
    "document",
    "summary",
    "XSum needs a manual download: follow "
    "https://github.com/EdinburghNLP/XSum/blob/master/XSum-Dataset/README.md to make "
    "xsum-extracts-from-downloads.tar.gz, then `tfds build xsum --data_dir=DIR "
    "--manual_dir=FOLDER_OF_THE_TARBALL` on a machine with internet access",
  ),
  "wmt14_en_de": TaskSpec(
    "wmt14_translate/de-en:1.0.0",
    "translate English to German: ",
    "en",
    "de",
    "`tfds build wmt14_translate/de-en --data_dir=DIR` on a machine with internet access "
    "(it downloads several GB)",
  ),
  "natural_instructions": TaskSpec(
    "",
    "Definition: ",
    "input",
    "output",
    "clone https://github.com/allenai/natural-instructions and point task.data_dir at its "
    "tasks/ folder (or a folder with a subset of its task JSON files)",
  ),
}

VALIDATION_BUCKETS = 20  # Natural Instructions: 1 instance in 20 is held out (by id hash)


def natural_instructions_files(data_dir: str) -> list[str]:
  """The task JSON files of a Natural Instructions folder, sorted; [] when there are none."""
  return sorted(glob.glob(os.path.join(data_dir, "*.json"))) if data_dir else []


def data_errors(name: str, data_dir: str) -> list[str]:
  """Problems with `task.name` / `task.data_dir` that are visible without TensorFlow."""
  if name not in TASKS:
    return [f"task.name: {name!r} is not one of {tuple(TASKS)}"]
  spec = TASKS[name]
  if spec.tfds_name:
    if data_dir and not os.path.isdir(data_dir):
      return [
        f"task.data_dir: {data_dir!r} is not a directory; it must be the TFDS data "
        f"directory holding {spec.tfds_name} (build it with {spec.build})"
      ]
    return []
  if not natural_instructions_files(data_dir):
    return [
      f"task.data_dir: {data_dir!r} holds no task JSON files (*.json); for {name}, {spec.build}"
    ]
  return []
