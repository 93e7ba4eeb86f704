"""Study (a): data regimes at equal steps, offline vs online teacher vs online (on-policy) student.

The default tiny setup (configs/tiny.py): offline N = 4,096 prompts x k = 1, online regimes on
the same prompts, 2,000 steps, seeds 0-4 (0-2 were used to choose the setting, 3-4 were not).
  python -m th_distill.study --config=configs/studies/regimes.py --workdir=/tmp/studies
"""

from th_distill.config import base_config
from th_distill.study import study_config


def get_config():
  base = base_config()
  base.regimes = ("offline", "online_teacher", "online_student")
  return study_config(
    "regimes",
    "Data regimes: offline vs online teacher vs online student (tiny, equal steps)",
    base,
    {"default": {}},
    seeds=(0, 1, 2, 3, 4),
    reference="offline",
  )
