"""End-to-end tests of the pipeline on the micro configuration (seconds each)."""

import json
import os
import shutil

import numpy as np
import pytest
from run_rows import cut_after_checkpoint, untimed_rows

from th_distill import experiment
from th_distill.config.run_config import RunConfig
from th_distill.data import pools as pool_lib
from th_distill.data import regimes as regime_lib
from th_distill.models.tokens import T5_TOKENS
from th_distill.observing.metric_names import GOLDEN, PROXY, TRAIN_PROXY
from th_distill.observing.metrics_io import read_metrics
from th_distill.rundir import checkpoints
from th_distill.training.online_sampling import online_prompts


def _rows(workdir, regime):
  return read_metrics(os.path.join(workdir, regime, "metrics.jsonl"))


@pytest.mark.parametrize("init", ["scratch", "sft"])
def test_every_regime_end_to_end(micro, tmp_path, init):
  micro.regimes = ("offline", "online_teacher", "online_student", "mixture")
  micro.student.init = init
  micro.write_figures = init == "scratch"  # one run with its figures, one without
  summary = experiment.run(micro, str(tmp_path))

  for name in ("config.json", "summary.json", "report.md"):
    assert os.path.exists(tmp_path / name), name
  report_text = (tmp_path / "report.md").read_text()
  for name in ("curves", "proxy_golden", "detector"):
    assert os.path.exists(tmp_path / f"{name}.png") == micro.write_figures, name
    assert (f"]({name}.png)" in report_text) == micro.write_figures, name
  assert json.load(open(tmp_path / "config.json"))["student"]["init"] == init
  info = checkpoints.read_json(str(tmp_path / "stage1" / "info.json"))
  assert ("student_sft" in info) == (init == "sft")
  assert info["teacher/golden/fkl@oracle_samples"] > 0
  for regime in micro.regimes:
    rows = _rows(tmp_path, regime)
    assert [r["step"] for r in rows] == [0, 3, 6]
    for split in ("eval_oracle", "eval_teacher", "eval_student", "train_teacher"):
      for ref in ("proxy", "golden"):
        for div in ("fkl", "rkl", "jsd"):
          for suffix in ("", "_seq"):
            value = rows[-1][f"{split}/{ref}/{div}{suffix}"]
            assert np.isfinite(value) and value >= -1e-6
    for name in (
      "train/loss",
      "train/proxy/fkl",
      "train/golden/rkl",
      "time/steps_s",
      "throughput/train_tokens_per_s",
    ):
      assert name in rows[-1]
    assert "train/loss" not in rows[0]  # no training before step 0
    s = summary["regimes"][regime]
    golden = [r[GOLDEN] for r in rows]
    assert s["golden_min"] == pytest.approx(min(golden))
    assert s["golden_final"] == pytest.approx(golden[-1])
    assert s["proxy_final"] == pytest.approx(rows[-1][PROXY])
    assert s["golden_rise_pct"] == pytest.approx(100 * (golden[-1] - min(golden)) / min(golden))
    teacher = info["teacher/golden/fkl@oracle_samples"]
    passed = [r["step"] for r in rows if r[GOLDEN] < teacher]
    assert s["teacher_gap_at_golden_min"] == pytest.approx(teacher - min(golden))
    assert s["teacher_pass_step"] == (passed[0] if passed else None)
    proxy = [r[PROXY] for r in rows]
    floor = proxy.index(min(proxy))
    assert (s["proxy_floor"], s["proxy_floor_step"]) == (min(proxy), rows[floor]["step"])
    assert s["teacher_gap_at_proxy_floor"] == pytest.approx(teacher - golden[floor])
    assert f"{regime}: " in report_text and "passed its teacher" in report_text
    best = golden.index(min(golden))
    proxy_change = 100 * (rows[-1][PROXY] - rows[best][PROXY]) / rows[best][PROXY]
    assert s["proxy_at_golden_min"] == pytest.approx(rows[best][PROXY])
    assert s["proxy_change_after_min_pct"] == pytest.approx(proxy_change)
    rises = s["golden_rise_pct"] >= micro.hacking_threshold_pct
    assert s["outcome"] == (
      "none" if not rises else "teacher_hacking" if proxy_change <= 0 else "overfitting"
    )
    assert s["hacking"] == (s["outcome"] == "teacher_hacking")
    assert s["train_proxy_final"] == pytest.approx(rows[-1][TRAIN_PROXY])
    assert set(s["views"]) == {f"{d}{x}" for d in ("fkl", "rkl", "jsd") for x in ("", "_seq")}
    assert s["views"]["rkl_seq"]["golden_metric"] == "eval_student/golden/rkl_seq"
    assert s["views"]["fkl"]["outcome"] == s["outcome"]
    for model in ("student", "teacher", "oracle"):
      assert 0 < s["entropy_final"][model] <= np.log(micro.task.vocab_size) + 1e-4
    assert os.listdir(tmp_path / regime / "tensorboard")
    assert os.path.exists(tmp_path / regime / "checkpoints" / "6")


def test_offline_dataset_holds_n_prompts_times_k_generations(micro, tmp_path):
  micro.regimes = ("offline",)
  experiment.run(micro, str(tmp_path))
  data = checkpoints.load_arrays(str(tmp_path / "offline_dataset.npz"))
  n, k = micro.offline.num_prompts, micro.offline.generations_per_prompt
  pools = pool_lib.prompt_pools(micro)
  assert data["prompts"].shape == data["prompt_mask"].shape == (n * k, micro.task.prompt_length)
  assert data["responses"].shape == data["mask"].shape == (n * k, micro.task.response_length)
  offline_prompts = pools["distill"][np.repeat(np.arange(n), k)]
  np.testing.assert_array_equal(data["prompts"], offline_prompts.tokens)
  np.testing.assert_array_equal(data["prompt_mask"], offline_prompts.mask)
  np.testing.assert_array_equal(data["prompt_index"], np.repeat(np.arange(n), k))
  # Pools are disjoint: no distillation prompt is an eval or oracle prompt.
  distill = {p.tobytes() for p in pools["distill"].tokens}
  assert not distill & {p.tobytes() for p in pools["eval"].tokens}
  assert not distill & {p.tobytes() for p in pools["oracle"].tokens}
  # Responses: real tokens up to and including EOS, then padding.
  for tokens, mask in zip(data["responses"], data["mask"]):
    valid = int(mask.sum())
    assert np.all(mask[:valid] == 1) and np.all(mask[valid:] == 0)
    assert np.all(tokens[valid:] == T5_TOKENS.pad_id)
    assert not np.isin(tokens[: valid - 1], T5_TOKENS.stop_ids).any()  # EOS only last


def test_stages_are_cached_and_reused(micro, tmp_path):
  micro.regimes = ("offline",)
  experiment.run(micro, str(tmp_path))
  stamps = {
    p: os.path.getmtime(tmp_path / p)
    for p in ("stage1/info.json", "offline_dataset.npz", "offline/done.json")
  }
  first = _rows(tmp_path, "offline")
  micro.regimes = ("offline", "online_teacher")
  experiment.run(micro, str(tmp_path))
  for path, stamp in stamps.items():
    assert os.path.getmtime(tmp_path / path) == stamp, f"{path} was rebuilt"
  assert _rows(tmp_path, "offline") == first
  assert _rows(tmp_path, "online_teacher")


def test_cached_stage_from_another_config_is_an_error(micro, tmp_path):
  micro.regimes = ("offline",)
  experiment.run(micro, str(tmp_path))
  micro.teacher.steps = 7
  with pytest.raises(ValueError, match="different configuration"):
    experiment.run(micro, str(tmp_path))


def test_resumed_run_matches_uninterrupted_run(micro, tmp_path):
  micro.regimes = ("online_student",)
  full = str(tmp_path / "full")
  experiment.run(micro, full)

  # A run stopped after the checkpoint of step 4, its last metric row torn by the kill.
  partial = str(tmp_path / "partial")
  shutil.copytree(full, partial)
  cut_after_checkpoint(partial, "online_student", 4)
  with open(os.path.join(partial, "online_student", "metrics.jsonl"), "a") as f:
    f.write('{"step": 6, "torn')
  experiment.run(micro, partial)
  assert untimed_rows(partial, "online_student") == untimed_rows(full, "online_student")


def test_memory_settings_run_end_to_end_and_barely_change_the_metrics(micro, tmp_path):
  """bfloat16 frozen models, chunked logits and micro-batches: same steps, close metrics."""
  micro.regimes = ("online_teacher",)
  experiment.run(micro, str(tmp_path / "default"))
  micro.frozen_dtype = "bfloat16"
  micro.sequence_chunks = 2
  micro.student.micro_batches = 2
  experiment.run(micro, str(tmp_path / "lean"))
  for ref_row, row in zip(
    _rows(tmp_path / "default", "online_teacher"), _rows(tmp_path / "lean", "online_teacher")
  ):
    assert row["step"] == ref_row["step"]
    # bfloat16 weights shift the teacher's and oracle's logits by ~1e-2 relative.
    np.testing.assert_allclose(row[GOLDEN], ref_row[GOLDEN], rtol=0.05)
    np.testing.assert_allclose(row[PROXY], ref_row[PROXY], rtol=0.05)


@pytest.mark.parametrize("source", ["offline", "pool"])
def test_online_prompts_come_from_the_configured_source(micro, source):
  micro.online.prompts = source
  typed = RunConfig.from_config(micro)
  pools = pool_lib.prompt_pools(typed)
  prompts = online_prompts(typed, pools["distill"])
  expected = (
    pools["distill"][: micro.offline.num_prompts] if source == "offline" else pools["distill"]
  )
  np.testing.assert_array_equal(prompts.tokens, expected.tokens)
  np.testing.assert_array_equal(prompts.mask, expected.mask)


def test_online_regime_trains_on_the_offline_prompts_by_default(micro, monkeypatch, tmp_path):
  micro.regimes = ("online_teacher",)
  seen = []
  original = regime_lib.online_batches

  def recording(prompt_pool, *args, **kwargs):
    seen.append(prompt_pool)
    return original(prompt_pool, *args, **kwargs)

  monkeypatch.setattr(regime_lib, "online_batches", recording)
  experiment.run(micro, str(tmp_path))
  pools = pool_lib.prompt_pools(RunConfig.from_config(micro))
  expected = pools["distill"][: micro.offline.num_prompts]
  np.testing.assert_array_equal(seen[0].tokens, expected.tokens)
  np.testing.assert_array_equal(seen[0].mask, expected.mask)
