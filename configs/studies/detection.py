"""Study (f): the hacking detector on a harder test set, and detection that switches to fresh data.

Run on test seeds only (10-14: never used to choose a setting; the detector's settings were
fixed on seeds 0-4 before these ran). Arms, all at 2,000 steps of batch 32 unless said:
- `default` (configs/tiny.py): `offline` (N = 4,096 x k = 1, 15.6 epochs: the positives) and
  `online_teacher`;
- `refreshed`: offline, the dataset regenerated every 500 steps (study (e): it does not hack) --
  an offline negative;
- `strong_teacher` (configs/tiny_strong_teacher.py): a teacher better than its student;
  `offline` at the default's 15.6 epochs does not hack (an offline negative at equal epochs),
  and `online_teacher`'s proxy settles onto its floor;
- `overfit` (configs/tiny_overfit.py, 3,000 steps): `offline` on N = 128 prompts over-fits
  (golden and held-out proxy rise together), `online_teacher` on a pool of 1,024 prompts;
- `refresh_on_detect`: offline with `detection.on_detect = 'refresh'`: when the detector fires,
  the student goes back to its `best_predicted` parameters and trains on fresh teacher samples
  to the end; paired with `default / offline` and `default / online_teacher`.
  python -m th_distill.study --config=configs/studies/detection.py --workdir=/tmp/studies
  python -m th_distill.detector_eval --workdir=/tmp/studies --calibration_seeds=0,1,2,3,4 \
      --test_seeds=10,11,12,13,14
"""

from th_distill.config import base_config
from th_distill.study import study_config

STRONG_TEACHER = {
  "prompts": {"num_oracle": 16384},
  "teacher": {
    "model": {"d_model": 128, "d_ff": 256, "d_kv": 32},
    "learning_rate": 1e-3,
    "steps": 1500,
  },
}
OVERFIT = {
  "oracle": {"weight_scale": 2.0},
  "student": {"model": {"d_model": 32, "d_kv": 8, "d_ff": 64}, "init": "scratch", "steps": 3000},
  "prompts": {"num_distill": 1024},
  "offline": {"num_prompts": 128},
  "online": {"prompts": "pool"},
}
BOTH = ("offline", "online_teacher")


def get_config():
  variants = {
    "default": {"regimes": BOTH},
    "refreshed": {"regimes": ("offline",), "offline": {"refresh_every": 500}},
    "strong_teacher": {"regimes": BOTH, **STRONG_TEACHER},
    "overfit": {"regimes": BOTH, **OVERFIT},
    "refresh_on_detect": {"regimes": ("offline",), "detection": {"on_detect": "refresh"}},
  }
  return study_config(
    "detection",
    "The detector on a harder test set, and detection that refreshes the data (tiny)",
    base_config(),
    variants,
    seeds=(10, 11, 12, 13, 14),
    reference="default / offline",
    references={"refresh_on_detect / offline": "default / online_teacher"},
  )
