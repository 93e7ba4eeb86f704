"""Study (a): data regimes at equal steps, offline vs online teacher vs online (on-policy) student.

The default tiny setup (configs/tiny.py): offline N = 128 prompts x k = 1, 3,000 steps, 3 seeds.
  python -m th_distill.study --config=configs/studies/regimes.py --workdir=/tmp/studies
"""

import ml_collections

from th_distill.config import base_config


def get_config():
  c = ml_collections.ConfigDict()
  c.name = "regimes"
  c.title = "Data regimes: offline vs online teacher vs online student (tiny, equal steps)"
  c.base = base_config()
  c.base.regimes = ("offline", "online_teacher", "online_student")
  c.variants = {"default": {}}
  c.seeds = (0, 1, 2)
  return c
