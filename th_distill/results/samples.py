"""A report's sample texts: a few held-out prompts with the oracle's and the teacher's responses
(stage 1's evaluation sets) and each regime's final student's (`RegimeDirectory.samples`),
decoded with the task's vocabulary, so a reader sees what the models say, not only how far
apart they are. Only the masked-in tokens are decoded: padding never reaches the text.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from th_distill.data.vocabularies import Vocabulary
from th_distill.rundir import checkpoints
from th_distill.rundir.layout import REPORT_SAMPLE_ROWS, RunDirectory

_MAX_CHARS = 400  # a decoded text is cut after this many characters


def _text(vocabulary: Vocabulary, ids: np.ndarray, mask: np.ndarray) -> str:
  text = vocabulary.decode([int(i) for i in ids], mask=np.asarray(mask, bool))
  if not text:
    return "(empty)"
  text = text if len(text) <= _MAX_CHARS else text[:_MAX_CHARS] + " [...]"
  return "`" + text.replace("`", "'").replace("\n", "\\n") + "`"


def _sets(run_dir: RunDirectory, regimes: tuple[str, ...]) -> dict[str, Mapping[str, np.ndarray]]:
  """{source: arrays} of the sample sets that exist: 'oracle', 'teacher', then each regime's
  final student ('student (<regime>)')."""
  paths = {source: run_dir.stage1.eval_set(source) for source in ("oracle", "teacher")}
  paths.update({f"student ({r})": run_dir.regime(r).samples for r in regimes})
  sets = {}
  for name, path in paths.items():
    arrays = checkpoints.readable_arrays(path, f"{name} samples") if os.path.exists(path) else None
    if arrays is not None:
      sets[name] = arrays
  return sets


def section(run_dir: RunDirectory, regimes: tuple[str, ...], vocabulary: Vocabulary) -> list[str]:
  """report.md's lines showing `REPORT_SAMPLE_ROWS` held-out prompts and every model's response to
  them ([] when no sample set is on disk, e.g. a study whose stage 1 lives elsewhere)."""
  sets = _sets(run_dir, regimes)
  if not sets:
    return []
  lines = ["## Samples on held-out prompts", ""]
  first = next(iter(sets.values()))
  for row in range(min(REPORT_SAMPLE_ROWS, len(first["prompts"]))):
    prompt = _text(vocabulary, first["prompts"][row], first["prompt_mask"][row])
    lines += [f"**Prompt {row + 1}:** {prompt}", ""]
    for name, arrays in sets.items():
      if row < len(arrays["responses"]):
        lines.append(
          f"- {name}: {_text(vocabulary, arrays['responses'][row], arrays['mask'][row])}"
        )
    lines.append("")
  return lines
