"""The names of the logged metrics (docs/metrics.md), in one place: training, logging, config
validation and the reports build or check names here.

Divergence curves are named `{split}/{reference}/{divergence}[_seq]`:
- split: `train` (the training batches, per token only) or one of EVAL_SETS;
- reference: `proxy` (against the teacher) or `golden` (against the oracle), REFERENCE_MODELS;
- divergence: `fkl`, `rkl` or `jsd` (`divergences.all_divergences`);
- no suffix: per token; PER_SEQUENCE (`_seq`): per sequence (evaluation sets only).
Evaluations also log `{split}/entropy/{student,teacher,oracle}` (`entropy`), and the detector
DETECTOR_FIRED and DETECTOR_SCORE.
"""

from __future__ import annotations

from th_distill.divergences import DIVERGENCES

# The evaluation sets: held-out prompts with responses sampled by the oracle, the teacher and the
# student, and training prompts with responses sampled by the teacher.
EVAL_ORACLE, EVAL_TEACHER, EVAL_STUDENT, TRAIN_TEACHER = EVAL_SETS = (
  "eval_oracle",
  "eval_teacher",
  "eval_student",
  "train_teacher",
)

# The references in metric names -> the model each stands for.
REFERENCE_MODELS = {"proxy": "teacher", "golden": "oracle"}

PER_SEQUENCE = "_seq"


def curve(split: str, reference: str, divergence: str, per_sequence: bool = False) -> str:
  """`{split}/{reference}/{divergence}`, with PER_SEQUENCE appended if `per_sequence`."""
  return f"{split}/{reference}/{divergence}{PER_SEQUENCE if per_sequence else ''}"


def entropy(split: str, model: str) -> str:
  """The per-token next-token entropy of `model` (student, teacher, oracle) on `split`."""
  return f"{split}/entropy/{model}"


# The headline curves: golden and proxy on held-out prompts, proxy on training prompts.
GOLDEN = curve(EVAL_ORACLE, "golden", "fkl")
PROXY = curve(EVAL_TEACHER, "proxy", "fkl")
TRAIN_PROXY = curve(TRAIN_TEACHER, "proxy", "fkl")

# The curves of the training batches, and every scalar of one distillation step
# (`train.distill_step`; the golden ones only with an oracle).
TRAIN_CURVES = tuple(
  curve("train", ref, div) for ref in REFERENCE_MODELS for div in DIVERGENCES
) + ("train/loss",)
DISTILL_METRICS = TRAIN_CURVES + ("train/grad_norm", "train/tokens")

# The hacking detector's columns (`monitor.HackingMonitor.observe`).
DETECTOR_FIRED = "detector/fired"
DETECTOR_SCORE = "detector/score"
# 1 from the evaluation at which a run with `detection.on_detect = 'refresh'` switched to fresh
# teacher samples on, 0 before (only in such runs).
DETECTOR_REFRESHED = "detector/refreshed"

# The hacking signature read three ways on held-out prompts, per token and per sequence:
# view -> (golden curve, proxy curve, which model sampled the responses of each).
_VIEW_SETS = {
  "fkl": (EVAL_ORACLE, EVAL_TEACHER, "golden on oracle samples, proxy on teacher samples"),
  "rkl": (EVAL_STUDENT, EVAL_STUDENT, "both on the student's samples"),
  "jsd": (EVAL_ORACLE, EVAL_TEACHER, "golden on oracle samples, proxy on teacher samples"),
}
SIGNATURE_VIEWS = {
  div + (PER_SEQUENCE if seq else ""): (
    curve(golden_set, "golden", div, seq),
    curve(proxy_set, "proxy", div, seq),
    sampled_by,
  )
  for div, (golden_set, proxy_set, sampled_by) in _VIEW_SETS.items()
  for seq in (False, True)
}

_CURVES = frozenset(TRAIN_CURVES) | {
  curve(split, ref, div, seq)
  for split in EVAL_SETS
  for ref in REFERENCE_MODELS
  for div in DIVERGENCES
  for seq in (False, True)
}


def is_curve_name(name: str) -> bool:
  """Whether a stage-2 run logs a divergence or loss curve of this name."""
  return name in _CURVES
