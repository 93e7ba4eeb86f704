"""A study on a user's own models and prompts, end to end through the command line: a tiny random
Qwen2 saved by `transformers` (safetensors, three seeds: oracle, teacher and student), its
byte-level BPE tokenizer trained in the test (ids 0 and 1 are `!` and `"`), a JSONL prompt file
through the chat template, `configs/your_model.py` shrunk to seconds. The run reads each model's
architecture and the special tokens from the files, trains the teacher and the student's start by
SFT on oracle samples, distils under two regimes, and writes a verdict per regime and a report
whose sample texts are the tokenizer's decoding of the sampled ids."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hf_artifacts import CORPUS, write_prompt_file, write_qwen2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXTS = [f"{i}: {sentence}" for i, sentence in enumerate(sorted(set(CORPUS)) * 10)]


def _config_file(path, models: dict[str, str], prompt_file: str, vocab_size: int) -> str:
  overrides = [
    f"c.task.update(prompt_file={prompt_file!r}, vocabulary={models['oracle']!r}, "
    f"vocab_size={vocab_size}, prompt_length=40, response_length=6)",
    "c.prompts.update(num_oracle=32, num_distill=24, num_eval=8)",
    *(f"c.{name}.checkpoint = {directory!r}" for name, directory in models.items()),
    *(f"c.{name}.model.remat = 'none'" for name in models),
    "c.teacher.update(steps=4, batch_size=8, learning_rate=1e-3, warmup_steps=0)",
    "c.student.update(sft_steps=2, steps=4, batch_size=8, learning_rate=1e-3, warmup_steps=0)",
    "c.offline.update(num_prompts=8, generations_per_prompt=2)",
    "c.eval.update(batch_size=8, num_train_prompts=8)",
    "c.update(frozen_dtype='float32', sequence_chunks=1, eval_every=2, eval_log_points=0)",
    "c.update(checkpoint_every=4, write_figures=False, regimes=('offline', 'online_student'))",
  ]
  lines = [
    "import importlib.util",
    f"spec = importlib.util.spec_from_file_location('your_model', "
    f"{os.path.join(REPO, 'configs', 'your_model.py')!r})",
    "your_model = importlib.util.module_from_spec(spec)",
    "spec.loader.exec_module(your_model)",
    "",
    "def get_config():",
    "  c = your_model.get_config()",
    *(f"  {line}" for line in overrides),
    "  return c",
    "",
  ]
  path.write_text("\n".join(lines))
  return str(path)


@pytest.mark.slow
def test_a_study_on_qwen2_checkpoints_and_a_prompt_file(tmp_path):
  artifacts = {
    name: write_qwen2(tmp_path / name, seed=seed)
    for seed, name in enumerate(("oracle", "teacher", "student"))
  }
  oracle = artifacts["oracle"]
  prompt_file = write_prompt_file(tmp_path / "prompts.jsonl", TEXTS)
  vocab_size = oracle.model.config.vocab_size
  config = _config_file(
    tmp_path / "config.py",
    {name: a.directory for name, a in artifacts.items()},
    prompt_file,
    vocab_size,
  )
  workdir = tmp_path / "run"
  result = subprocess.run(
    [sys.executable, "-m", "th_distill.main", f"--config={config}", f"--workdir={workdir}"],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]

  summary = json.loads((workdir / "summary.json").read_text())
  assert set(summary["regimes"]) == {"offline", "online_student"}
  for s in summary["regimes"].values():
    assert s["outcome"] in ("none", "teacher_hacking", "overfitting", "regression")
    assert np.isfinite(s["golden_min"]) and np.isfinite(s["golden_final"])
  recorded = json.loads((workdir / "config.json").read_text())
  assert recorded["teacher"]["model"]["family"] == "decoder"  # read from the checkpoint
  assert recorded["teacher"]["model"]["d_model"] == oracle.model.config.hidden_size

  report = (workdir / "report.md").read_text()
  tokenizer = oracle.tokenizer
  stops = {oracle.ids["<|im_end|>"], oracle.ids["<|endoftext|>"]}
  eval_set = np.load(workdir / "stage1" / "eval_teacher.npz")
  first = eval_set["prompts"][0][eval_set["prompt_mask"][0]].tolist()
  prompt_text = tokenizer.decode(first)
  assert prompt_text.startswith("<|im_start|>user\n") and prompt_text.endswith("assistant\n")
  text = prompt_text.split("\n")[1].removesuffix("<|im_end|>")  # trimmed at its end
  assert len(text) > 20 and any(t.startswith(text) for t in TEXTS)
  assert prompt_text.replace("\n", "\\n") in report
  for name in ("offline", "online_student"):
    samples = np.load(workdir / name / "samples.npz")
    ids = samples["responses"][0][samples["mask"][0] > 0].tolist()
    text = tokenizer.decode([i for i in ids if i not in stops])
    line = next(x for x in report.splitlines() if x.startswith(f"- student ({name}):"))
    assert line == f"- student ({name}): " + (
      f"`{text}`".replace("\n", "\\n") if text else "(empty)"
    )
