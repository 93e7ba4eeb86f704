"""bench/phase_profile.py: the log parser on an excerpt of a default study's log, the phases'
FLOPs from the plan, and the same-shape matmul chains."""

import jax
import numpy as np
import pytest

from bench import phase_profile as pp
from th_distill.planning import flops, workload

# Lines of `python -m th_distill.main --config=configs/tiny.py` (2026-12-03), plus one line that
# is not absl's.
LOG = """\
I1203 10:17:54.940173 140692083616640 preview.py:78] Plan: 1 cpu device(s) (cpu) in 1 process(es), mesh {'data': 1, 'fsdp': 1, 'model': 1}
I1203 10:17:56.050115 140692083616640 preview.py:122]   time: at least 5 min 09 s (the work's FLOPs at this machine's matmul rate, 35 GFLOP/s); each phase's first timed steps give the estimates that follow
I1203 10:17:56.082598 140692083616640 progress.py:104] stage 1: oracle calibration (256 prompts): starting (15 sampling passes; 3.9e+10 FLOP)
I1203 10:18:15.942040 140692083616640 progress.py:214] stage 1: oracle calibration (256 prompts): done in 20 s; run ETA at least 11 min 46 s
W1203 10:18:14.592848 140692083616640 progress.py:133] stage 1: oracle calibration (256 prompts): 15 sampling passes, 1.34 s each after the first (which compiles): phase ETA 16 s
error: not an absl line
I1203 10:18:15.942340 140692083616640 progress.py:104] stage 1: oracle samples: starting (4,096 samples; 2.1e+10 FLOP)
I1203 10:18:22.018017 140692083616640 progress.py:214] stage 1: oracle samples: done in 6 s; run ETA at least 7 min 24 s
I1203 10:18:22.032364 140692083616640 progress.py:104] stage 1: teacher SFT (batch 32): starting (1,500 steps; 7.3e+11 FLOP)
I1203 10:19:02.532772 140692083616640 progress.py:214] stage 1: teacher SFT (batch 32): done in 41 s; run ETA 8 min 10 s
I1203 10:19:02.539689 140692083616640 progress.py:104] stage 1: student SFT (batch 32): starting (500 steps; 2.4e+11 FLOP)
I1203 10:19:18.546189 140692083616640 progress.py:214] stage 1: student SFT (batch 32): done in 16 s; run ETA 7 min 50 s
I1203 10:19:18.547274 140692083616640 progress.py:104] stage 1: evaluation sets (oracle and teacher): starting (1,024 samples; 5.1e+09 FLOP)
I1203 10:19:25.369837 140692083616640 progress.py:214] stage 1: evaluation sets (oracle and teacher): done in 7 s; run ETA 6 min 48 s
I1203 10:19:25.953249 140692083616640 progress.py:104] regime 1 of 3 (offline): starting (2,000 steps, 48 evaluations; 3.1e+12 FLOP)
I1203 10:19:25.992716 140692083616640 progress.py:104] stage 2: offline dataset (teacher): starting (4,096 samples; 2.1e+10 FLOP)
I1203 10:19:26.754749 140692083616640 progress.py:214] stage 2: offline dataset (teacher): done in 1 s; run ETA 6 min 18 s
I1203 10:19:27.036731 140692083616640 distill.py:202] regime 1 of 3 (offline): steps 0..2000
I1203 10:21:19.447948 140692083616640 progress.py:214] regime 1 of 3 (offline): done in 1 min 53 s; run ETA 3 min 49 s
I1203 10:21:19.451206 140692083616640 progress.py:104] regime 2 of 3 (online_teacher): starting (2,000 steps, 2,000 generated batches, 256 train-prompt samples, 48 evaluations; 3.4e+12 FLOP)
I1203 10:21:19.543150 140692083616640 distill.py:202] regime 2 of 3 (online_teacher): steps 0..2000
I1203 10:23:53.591564 140692083616640 progress.py:214] regime 2 of 3 (online_teacher): done in 2 min 34 s; run ETA 2 min 28 s
I1203 10:23:53.595269 140692083616640 progress.py:104] regime 3 of 3 (online_student): starting (2,000 steps, 2,000 generated batches, 256 train-prompt samples, 48 evaluations; 3.4e+12 FLOP)
I1203 10:23:53.706089 140692083616640 distill.py:202] regime 3 of 3 (online_student): steps 0..2000
I1203 10:27:54.801533 140692083616640 progress.py:214] regime 3 of 3 (online_student): done in 4 min 01 s; run ETA 0 s
I1203 10:27:59.636254 140692083616640 experiment.py:90] Done in 605s; report in /tmp/pp/wd/report.md
"""
YEAR = 2026
# The same study with its regimes side by side (`mesh.regimes_at_once`, 2026-12-03): they start
# together, the offline dataset runs inside regime 1, and regime 3 ends before regime 2.
LOG_SIDE_BY_SIDE = """\
I1203 18:14:39.959845 140296958901120 preview.py:78] Plan: 1 cpu device(s) (cpu) in 1 process(es), mesh {'data': 1, 'fsdp': 1, 'model': 1}
I1203 18:14:40.486747 140296958901120 preview.py:122]   time: at least 1 min 00 s (the work's FLOPs at this machine's matmul rate, 180 GFLOP/s); each phase's first timed steps give the estimates that follow
I1203 18:14:40.506035 140296958901120 progress.py:104] stage 1: oracle calibration (256 prompts): starting (15 sampling passes; 3.9e+10 FLOP)
I1203 18:14:49.693383 140296958901120 progress.py:214] stage 1: oracle calibration (256 prompts): done in 9 s; run ETA at least 5 min 30 s
I1203 18:14:49.693662 140296958901120 progress.py:104] stage 1: oracle samples: starting (4,096 samples; 2.1e+10 FLOP)
I1203 18:14:52.415632 140296958901120 progress.py:214] stage 1: oracle samples: done in 3 s; run ETA at least 3 min 20 s
I1203 18:14:52.420586 140296958901120 progress.py:104] stage 1: teacher SFT (batch 32): starting (1,500 steps; 7.3e+11 FLOP)
I1203 18:15:21.080252 140296958901120 progress.py:214] stage 1: teacher SFT (batch 32): done in 29 s; run ETA 5 min 33 s
I1203 18:15:21.086006 140296958901120 progress.py:104] stage 1: student SFT (batch 32): starting (500 steps; 2.4e+11 FLOP)
I1203 18:15:33.887147 140296958901120 progress.py:214] stage 1: student SFT (batch 32): done in 13 s; run ETA 5 min 26 s
I1203 18:15:33.887744 140296958901120 progress.py:104] stage 1: evaluation sets (oracle and teacher): starting (1,024 samples; 5.1e+09 FLOP)
I1203 18:15:38.898801 140296958901120 progress.py:214] stage 1: evaluation sets (oracle and teacher): done in 5 s; run ETA 5 min 17 s
I1203 18:15:39.348726 140294653679296 progress.py:104] regime 3 of 3 (online_student): starting (2,000 steps, 2,000 generated batches, 256 train-prompt samples, 48 evaluations; 3.4e+12 FLOP)
I1203 18:15:39.362011 140294678857408 progress.py:104] regime 1 of 3 (offline): starting (2,000 steps, 48 evaluations; 3.1e+12 FLOP)
I1203 18:15:39.370418 140294862780096 progress.py:104] regime 2 of 3 (online_teacher): starting (2,000 steps, 2,000 generated batches, 256 train-prompt samples, 48 evaluations; 3.4e+12 FLOP)
I1203 18:15:39.427638 140294678857408 progress.py:104] stage 2: offline dataset (teacher): starting (4,096 samples; 2.1e+10 FLOP)
I1203 18:15:40.683450 140294678857408 progress.py:214] stage 2: offline dataset (teacher): done in 1 s; run ETA 2 min 36 s
I1203 18:17:31.172719 140294678857408 progress.py:214] regime 1 of 3 (offline): done in 1 min 51 s; run ETA 1 min 53 s
I1203 18:18:28.288102 140294653679296 progress.py:214] regime 3 of 3 (online_student): done in 2 min 48 s; run ETA 1 s
I1203 18:18:28.500861 140294862780096 progress.py:214] regime 2 of 3 (online_teacher): done in 2 min 49 s; run ETA 0 s
I1203 18:18:30.597758 140296958901120 experiment.py:89] Done in 231s; report in /tmp/phase_profile_0a_17lip/report.md
"""


@pytest.fixture(scope="module")
def config():
  return pp.run_config(f"{pp.REPO}/configs/tiny.py")


def test_parse_duration_reads_the_progress_formats():
  assert pp.parse_duration("42 s") == 42
  assert pp.parse_duration("5 min 09 s") == 309
  assert pp.parse_duration("2 h 10 min") == 7800
  assert pp.parse_duration("3.5 days") == 3.5 * 86400


def test_log_lines_phase_intervals_and_nested_phases(config):
  lines = pp.parse_log(LOG, YEAR)
  assert len(lines) == len(LOG.splitlines()) - 1  # the non-absl line is skipped
  titles = [p.title for p in pp.plan_phases(config)]
  intervals = pp.phase_intervals(lines, titles)
  assert list(intervals) == titles  # every phase of the plan, regimes included
  assert pp.logged_titles(lines) == titles[:5] + titles[6:7] + titles[5:6] + titles[7:]
  start, done, _ = intervals["stage 1: oracle calibration (256 prompts)"]
  assert done - start == pytest.approx(19.859442, abs=1e-6)
  own = pp.exclusive_seconds(intervals)
  # The offline dataset ran inside regime 1: its time is subtracted from the regime's.
  assert own["stage 2: offline dataset (teacher)"] == pytest.approx(0.762033, abs=1e-6)
  assert own["regime 1 of 3 (offline)"] == pytest.approx(113.494699 - 0.762033, abs=1e-6)
  assert own["regime 2 of 3 (online_teacher)"] == pytest.approx(154.140358, abs=1e-6)
  assert pp.lower_bound(lines) == (309.0, 35.0)


def test_regimes_side_by_side_keep_their_own_spans_and_the_rows_add_up(config):
  lines = pp.parse_log(LOG_SIDE_BY_SIDE, YEAR)
  phases = pp.plan_phases(config)
  intervals = pp.phase_intervals(lines, [p.title for p in phases])
  own = pp.exclusive_seconds(intervals)
  # Regime 3 ran inside regime 2's span, side by side, and the offline dataset inside both:
  # only regime 1's thread built it, and no regime is subtracted from another.
  assert own["regime 2 of 3 (online_teacher)"] == pytest.approx(169.130443, abs=1e-6)
  assert own["regime 3 of 3 (online_student)"] == pytest.approx(168.939376, abs=1e-6)
  assert own["regime 1 of 3 (offline)"] == pytest.approx(111.810708 - 1.255812, abs=1e-6)
  # Stage 1 and the regimes cover 18:14:40.506 - 18:18:28.501 but for the gaps between them.
  covered = pp.covered_seconds(intervals.values())
  assert covered == pytest.approx(228.0 - 0.44 - 0.02, abs=0.05)
  start, end = lines[0].time - 3.0, lines[-1].time + 1.0
  specs = {pp.chain_spec(config, p, w).name for p in phases for w in p.work.values()}
  result = pp.profile(LOG_SIDE_BY_SIDE, start, end, config, dict.fromkeys(specs, 1e11), 1e11)
  assert result["overlap_seconds"] == pytest.approx(covered - sum(own.values()))
  assert result["overlap_seconds"] < -250  # two regimes' worth of time counted twice
  assert 0 <= result["between_phases_seconds"] < 1.0
  parts = result["startup_seconds"] + result["between_phases_seconds"] + result["tail_seconds"]
  parts += result["overlap_seconds"]
  assert parts + sum(r["seconds"] for r in result["phases"]) == pytest.approx(end - start)
  assert "regimes side by side (rows overlap)" in pp.table(result, 1e11)


def test_covered_seconds_merges_overlapping_and_nested_intervals():
  assert pp.covered_seconds([]) == 0.0
  spans = [(0, 2, 1), (1, 3, 2), (5, 6, 1), (5.2, 5.5, 1)]
  assert pp.covered_seconds([pp.Interval(*s) for s in spans]) == pytest.approx(4.0)


def test_a_log_over_new_year_keeps_its_order():
  text = "I1231 23:59:59.5 1 a.py:1] one\nI0101 00:00:00.5 1 a.py:1] two"
  first, second = pp.parse_log(text, YEAR)
  assert second.time - first.time == pytest.approx(1.0)
  assert (first.message, first.thread) == ("one", 1)


def test_phase_flops_are_the_plans(config):
  phases = {p.key: p for p in pp.plan_phases(config)}
  li, lt = config.task.prompt_length, config.task.response_length
  sft = phases[workload.TEACHER_SFT]
  expected = config.teacher.sft.steps * config.teacher.sft.batch_size
  assert pp.phase_flops(sft) == expected * flops.train_flops(config.model("teacher"), li, lt)
  regime = phases[workload.regime_key("offline")]
  assert regime.work["steps"].flops == workload.distill_step_flops(config)
  for phase in phases.values():  # the figures the run logged, to its two digits
    assert f"{phase.title}: starting (" in LOG
    assert f"{pp.phase_flops(phase):.2g} FLOP)" in LOG.split(f"{phase.title}: starting (")[1]


def test_profile_rows_add_up_to_the_wall_time(config):
  lines = pp.parse_log(LOG, YEAR)
  start, end = lines[0].time - 14.0, lines[-1].time + 3.0
  specs = {
    pp.chain_spec(config, p, w).name for p in pp.plan_phases(config) for w in p.work.values()
  }
  result = pp.profile(LOG, start, end, config, dict.fromkeys(specs, 1e11), 1e11)
  parts = result["startup_seconds"] + result["between_phases_seconds"] + result["tail_seconds"]
  assert result["overlap_seconds"] == pytest.approx(0.0)  # one phase at a time
  assert parts + sum(r["seconds"] for r in result["phases"]) == pytest.approx(end - start)
  assert result["imports_seconds"] == pytest.approx(14.0)
  assert result["wall_over_bound"] == pytest.approx((end - start) / 309.0)
  for row in result["phases"]:  # one ceiling for every shape: both ratios agree
    assert row["ratio_same_shape"] == pytest.approx(row["ratio_2048"])
  assert "regime 3 of 3 (online_student)" in pp.table(result, 1e11)


def test_chain_specs_follow_the_phases_shapes(config):
  phases = {p.key: p for p in pp.plan_phases(config)}
  step = pp.chain_spec(config, phases[workload.STUDENT_SFT], phases[workload.STUDENT_SFT].main)
  assert (step.rows, step.d_model, step.widths, step.backward) == (
    (256, 512),
    64,
    (64, 128, 64),
    True,
  )
  assert step.link_flops == 6 * (256 + 512) * 64 * (64 + 128 + 64)
  online = phases[workload.regime_key("online_student")]
  decode = pp.chain_spec(config, online, online.work["generated batches"])
  assert (decode.rows, decode.backward) == ((32,), False)
  evaluation = pp.chain_spec(config, online, online.work["evaluations"])
  assert (evaluation.rows, evaluation.backward) == ((512 * 8, 512 * 16), False)


def test_chain_program_keeps_values_bounded():
  spec = pp.ChainSpec("train", (16, 8), 8, (4, 16), True)
  xs, grads = jax.device_get(pp.chain_program(spec)(50))
  assert all(np.isfinite(x).all() and np.abs(x).max() < 10 for x in xs)
  assert len(grads) == 4 and all(np.isfinite(g).all() for g in grads)
