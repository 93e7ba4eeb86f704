"""The embedded CPU default: a tiny synthetic study that shows teacher hacking in minutes.

Oracle: a random T5 (d_model 64, 2+2 layers, vocab 64) sharpened to 2 nats/token. Teacher: the same
size, over-fit by SFT on 4,096 oracle samples. Student: d_model 32, distilled with forward KL for
3,000 steps under offline (N=128 prompts x k=1), online-teacher and online-student data.
"""

from th_distill.config import base_config


def get_config():
  return base_config()
