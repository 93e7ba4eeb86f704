"""Study (f): detection that switches to fresh data, and the detector's harder test set.

Run on test seeds only (10-14: never used to choose a setting; the detector's settings were
fixed on seeds 0-4 before these ran). Arms, all at 2,000 steps of batch 32 unless said:
- `default` (configs/tiny.py): `offline` (N = 4,096 x k = 1, 15.6 epochs: the positives) and
  `online_teacher`;
- `refreshed`: offline, the dataset regenerated every 500 steps (study (e): it does not hack) --
  an offline negative;
- `refresh_on_detect`: offline with `detection.on_detect = 'refresh'`: when the detector fires,
  the student goes back to its `best_predicted` parameters and trains on fresh teacher samples
  to the end; paired with `default / offline` and `default / online_teacher`.
The contrasts (a better teacher, over-fitting) are configs/studies/detection_contrasts.py.
  python -m th_distill.study --config=configs/studies/detection.py --workdir=/tmp/studies
"""

from th_distill.config import base_config
from th_distill.study import study_config

BOTH = ("offline", "online_teacher")


def get_config():
  variants = {
    "default": {"regimes": BOTH},
    "refreshed": {"regimes": ("offline",), "offline": {"refresh_every": 500}},
    "refresh_on_detect": {"regimes": ("offline",), "detection": {"on_detect": "refresh"}},
  }
  return study_config(
    "detection",
    "Detection that refreshes the data, and offline runs that do not hack (tiny)",
    base_config(),
    variants,
    seeds=(10, 11, 12, 13, 14),
    reference="default / offline",
    references={"refresh_on_detect / offline": "default / online_teacher"},
  )
