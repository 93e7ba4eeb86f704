"""Study (a): data regimes at equal steps, offline vs online teacher vs online (on-policy) student.

The default tiny setup (configs/tiny.py): offline N = 128 prompts x k = 1, 3,000 steps, 3 seeds.
  python -m th_distill.study --config=configs/studies/regimes.py --workdir=/tmp/studies
"""

from th_distill.config import base_config
from th_distill.study import study_config


def get_config():
  base = base_config()
  base.regimes = ("offline", "online_teacher", "online_student")
  return study_config("regimes", "Data regimes: offline vs online teacher vs online student "
                      "(tiny, equal steps)", base, {"default": {}})
