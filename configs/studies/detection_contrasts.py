"""Study (f), contrasts: the detector's harder test set beyond the default setting.

On test seeds 10-12 (never used to choose a setting), 2,000 steps of batch 32 unless said:
- `strong_teacher` (configs/tiny_strong_teacher.py): a teacher better than its student;
  `offline` at the default's 15.6 epochs does not hack (an offline negative at equal epochs),
  and `online_teacher`'s held-out proxy settles onto its floor (a negative the slowdown rule
  may mistake: a floor also slows the log-log slope);
- `overfit` (configs/tiny_overfit.py, 3,000 steps): `offline` on N = 128 prompts over-fits
  (golden and held-out proxy rise together: positives reported apart).
  python -m th_distill.study --config=configs/studies/detection_contrasts.py --workdir=/tmp/studies
  python -m th_distill.detector_eval --workdir=/tmp/studies --calibration_seeds=0,1,2,3,4 \
      --test_seeds=10,11,12,13,14
(the calibration runs: configs/studies/freshness.py on seeds 0-4, in the same workdir).
"""

from th_distill.config import base_config, overfit_config, strong_teacher_config
from th_distill.study import study_config


def _changes(config, base):
  """The fields of `config` that differ from `base`, as nested overrides."""
  out = {}
  for key, value in config.items():
    if hasattr(value, "items"):
      inner = _changes(value, base[key])
      if inner:
        out[key] = inner
    elif value != base[key]:
      out[key] = value
  return out


def get_config():
  base = base_config()
  variants = {
    "strong_teacher": {
      "regimes": ("offline", "online_teacher"),
      **_changes(strong_teacher_config(), base),
    },
    "overfit": {"regimes": ("offline",), **_changes(overfit_config(), base)},
  }
  return study_config(
    "detection_contrasts",
    "The detector's contrasts: a better teacher, over-fitting (tiny)",
    base,
    variants,
    seeds=(10, 11, 12),
  )
