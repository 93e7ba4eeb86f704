"""Study (issue 42): when does a student hack its teacher? The golden rise after the minimum
against the teacher-student gap (teacher golden minus the student's golden minimum; positive =
the student passed its teacher), over settings that move the gap and what else might predict the
rise. The map (SETTINGS, 6 settings x 5 seeds):
- teacher quality, from worse to better than the student's reach: the default teacher (1,500 SFT
  steps at lr 3e-3, past its best: about 0.8 nats/token), 500 steps (about 0.56) and the strong
  teacher (d_model 128 on 16,384 oracle samples, lr 1e-3: about 0.40);
- student capacity: d_model 64 (the default) and 32 (`half_*`), with the default and the strong
  teacher;
- data repetition: the diversity setting N = 1,024 x k = 4 (fewer prompts, more generations,
  the same 4,096 examples; offline alone);
- offline and online-teacher data on each, 4,000 steps: the report reads every run at 2x the
  default length (all 4,000 steps) and at 1x (its rows up to step 2,000: with the constant
  learning rate and no warm-up, the first 2,000 steps are the 2,000-step run's).
EXTENDED holds 10 more settings not run on the test seeds: the loss (Jensen-Shannon), the
student's start (100 SFT steps), four times the epochs, teacher width and data apart.
The grid was chosen on the probes of seeds 0 and 1 (docs/signature_search.md section 5); it is
tested on seeds 20-24, never used to choose anything (docs/studies.md section (g)).
  python -m th_distill.study --config=configs/studies/gap_map.py --workdir=W
    (the map: 55 runs of 4,000 steps; about 3 hours of one process on a 2-core CPU, 1.5 hours
    as two processes side by side, one part each:)
  python -m th_distill.study --config=configs/studies/gap_map.py:t1500,N1024_k4,t500 --workdir=A
  python -m th_distill.study --config=configs/studies/gap_map.py:strong,half_strong --workdir=B
    (then copy both workdirs' runs/ and stage1/ folders into W and add --finished_only);
  python -m th_distill.study --config=configs/studies/gap_map.py:first --workdir=W
    (a first pass: 6 settings on seed 20). A study config's variants run in sorted order of
    their names, seed by seed.
"""

from th_distill.config import base_config, model_config
from th_distill.study import study_config

STEPS = 4000
HALF = model_config("tiny", d_model=32, d_ff=64, d_kv=8, vocab_size=64)
STRONG_TEACHER = {
  "model": model_config("tiny", d_model=128, d_ff=256, d_kv=32, vocab_size=64).to_dict(),
  "learning_rate": 1e-3,
  "steps": 1500,
}
STRONG = {"teacher": STRONG_TEACHER, "prompts": {"num_oracle": 16384}}
# Offline data alone: k (generations per prompt) is a property of the fixed dataset.
DIVERSE = {"offline": {"num_prompts": 1024, "generations_per_prompt": 4}, "regimes": ("offline",)}
# Setting -> overrides of the default (configs/tiny.py) at STEPS steps: the map.
SETTINGS = {
  "t1500": {},
  "strong": STRONG,
  "t500": {"teacher": {"steps": 500}},
  "half_strong": {**STRONG, "student": {"model": HALF.to_dict()}},
  "half_t1500": {"student": {"model": HALF.to_dict()}},
  "N1024_k4": DIVERSE,
}
# More settings, not in the map (`gap_map.py:extended` runs them beside it; not run on the test
# seeds: the map was sized to the CPU time of one working session, docs/studies.md).
EXTENDED = {
  "jsd_t1500": {"loss": {"name": "jsd"}},
  "sft100_t1500": {"student": {"sft_steps": 100}},
  "N1024_k1": {"offline": {"num_prompts": 1024}},
  "strong_N1024_k4": {**STRONG, **DIVERSE},
  "t900": {"teacher": {"steps": 900}},
  "sft100_t900": {"teacher": {"steps": 900}, "student": {"sft_steps": 100}},
  "jsd_strong": {**STRONG, "loss": {"name": "jsd"}},
  "t500_N1024_k4": {"teacher": {"steps": 500}, **DIVERSE},
  "wide_t700": {"teacher": {"model": STRONG_TEACHER["model"], "steps": 700}},
  "narrow_16k": {"prompts": {"num_oracle": 16384}, "teacher": {"learning_rate": 1e-3}},
}
# Fewer prompts x more generations at the default's dataset size (read at equal gap).
DIVERSITY_SETTINGS = ("N1024_k4", "strong_N1024_k4", "t500_N1024_k4")
# The first pass: the settings that span the gap first, on one test seed.
FIRST = ("t1500", "strong", "t500", "N1024_k4", "half_t1500", "jsd_t1500")
SEEDS = (20, 21, 22, 23, 24)
CALIBRATION_SEEDS = (0, 1)


def get_config(options: str = ""):
  """The map; `options` 'extended': the map and EXTENDED; 'first': its first pass (FIRST on
  seed 20); setting names joined by ',': those settings on the map's seeds (their runs are the
  map's: the map can be run in parts, one part per workdir or one after the other, and reported
  with `--finished_only` on a workdir that holds them all)."""
  every = {**SETTINGS, **EXTENDED}
  named = {"": tuple(SETTINGS), "extended": tuple(every), "first": FIRST}
  names = named.get(options, tuple(options.split(",")))
  unknown = [name for name in names if name not in every]
  if unknown:
    raise ValueError(
      f"gap_map.py:{options}: {', '.join(map(repr, unknown))} unknown; the options are '' (the "
      f"map), 'extended', 'first' or setting names joined by ',' of {sorted(every)}"
    )
  base = base_config()
  base.regimes = ("offline", "online_teacher")
  base.student.steps = STEPS
  base.write_figures = False
  return study_config(
    "gap_map" + (f"_{options.replace(',', '-')}" if options else ""),
    "The golden rise against the teacher-student gap (tiny, 4,000 steps, read at 1x and 2x)",
    base,
    {name: every[name] for name in names},
    seeds=SEEDS[:1] if options == "first" else SEEDS,
    reference=f"{names[0]} / offline" if len(names) > 1 else "offline",
    analysis="gap_map",
    diversity=tuple(name for name in DIVERSITY_SETTINGS if name in names),
  )
