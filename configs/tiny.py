"""The embedded CPU default: a tiny synthetic study that shows teacher hacking in minutes.

Oracle: a random T5 (d_model 64, 2+2 layers, vocab 64) sharpened to 2 nats/token. Teacher: the
same size, trained by SFT on 4,096 oracle samples past its best golden distance. Student: the same
size, initialised by SFT on those oracle samples, distilled with forward KL for 2,000 steps under
offline (N = 4,096 prompts x k = 1), online-teacher and online-student data on the same prompts.
On held-out prompts the offline golden distance rises after its minimum while the proxy keeps
falling (docs/results.md).
"""

from th_distill.config import base_config


def get_config():
  return base_config()
