"""Nothing lost, nothing silently wrong: the workdir lock, config changes on resume, checkpoints
of another structure, lost metric rows, non-finite values, strict JSON and the sampler's edge
cases (docs/reliability.md lists which test shows which promise)."""

import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import micro_config, write_micro_config_file

from th_distill import divergences, experiment, sampling
from th_distill.models import T5, init_params, t5_config
from th_distill.models.tokens import T5_TOKENS
from th_distill.observing.metric_names import DISTILL_METRICS
from th_distill.observing.metrics_io import MetricsLost, MetricsWriter, check_rows, read_metrics
from th_distill.partitioning import Partitioner, make_mesh
from th_distill.rundir import checkpoints
from th_distill.rundir import lock as workdir_lock
from th_distill.rundir.records import ConfigChanged
from th_distill.training import guards
from th_distill.training.metric_sums import MetricSums
from th_distill.training.steps import create_train_state

REGIME = "offline"


@pytest.fixture
def config(finished):
  return finished[1].copy_and_resolve_references()


def _unfinish(workdir):
  """The workdir as a run stopped after its last checkpoint leaves it."""
  os.remove(os.path.join(workdir, REGIME, "done.json"))


# The workdir lock.


def test_a_held_workdir_is_refused_naming_the_holder_then_taken_over_once_it_dies(tmp_path):
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from th_distill.rundir import lock as workdir_lock\n"
      f"with workdir_lock.hold({str(tmp_path)!r}):\n  print('held', flush=True)\n"
      "  time.sleep(60)",
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(
      workdir_lock.WorkdirLocked, match=f"in use by pid {holder.pid} on host {socket.gethostname()}"
    ):
      with workdir_lock.hold(str(tmp_path)):
        pass
  finally:
    holder.kill()  # SIGKILL: the lock file still names it
    holder.wait()
  assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid
  with workdir_lock.hold(str(tmp_path)):  # the OS released its flock: stale, taken over
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
  assert (tmp_path / ".lock").read_text() == ""  # released: free, not stale


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
  (tmp_path / ".lock").write_text(json.dumps({"host": "gone", "pid": 12345, "since": 0}))
  with caplog.at_level(logging.WARNING):
    with workdir_lock.hold(str(tmp_path)):
      pass
  assert "Taking over the lock" in caplog.text and "pid 12345 on host gone" in caplog.text


def test_a_workdir_that_is_a_file_is_refused(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(workdir_lock.WorkdirLocked, match="exists and is not a directory"):
    with workdir_lock.hold(str(tmp_path / "file")):
      pass


def test_an_unwritable_workdir_is_refused(tmp_path):
  (tmp_path / "ro").mkdir(mode=0o500)
  if os.access(tmp_path / "ro", os.W_OK):
    pytest.skip("running as a user who can write anywhere")
  with pytest.raises(workdir_lock.WorkdirLocked, match="cannot be used: Permission denied"):
    with workdir_lock.hold(str(tmp_path / "ro" / "run")):
      pass


@pytest.mark.parametrize("process, locked_by_0", [(0, False), (1, False), (1, True)])
def test_in_a_multi_process_run_process_0_locks_and_every_process_gets_its_verdict(
  tmp_path, monkeypatch, process, locked_by_0
):
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: process)
  monkeypatch.setattr(
    workdir_lock.multihost_utils,
    "broadcast_one_to_all",
    lambda ok: ok if process == 0 else np.int32(locked_by_0),
  )
  if process == 0:  # another run holds it: process 0 refuses (and tells the others)
    with workdir_lock.hold(str(tmp_path)), pytest.raises(workdir_lock.WorkdirLocked):
      with workdir_lock.hold(str(tmp_path)):
        pass
  elif locked_by_0:
    with workdir_lock.hold(str(tmp_path)):
      assert not (tmp_path / ".lock").exists()  # only process 0 touches the lock
  else:
    with pytest.raises(workdir_lock.WorkdirLocked, match="process 0 could not lock"):
      with workdir_lock.hold(str(tmp_path)):
        pass


# Config changes on resume.


def test_an_unfinished_regime_under_a_changed_config_is_refused_before_config_json_changes(
  workdir, config
):
  _unfinish(workdir)
  before = open(os.path.join(workdir, "config.json")).read()
  config.loss.name = "rkl"
  config.student.learning_rate = 0.01
  with pytest.raises(ConfigChanged) as error:
    experiment.run(config, workdir)
  message = str(error.value)
  assert "loss.name: 'fkl' -> 'rkl'" in message
  assert "student.learning_rate: 0.001 -> 0.01" in message
  assert "--config.loss.name=fkl --config.student.learning_rate=0.001" in message
  assert "\n" not in message
  assert open(os.path.join(workdir, "config.json")).read() == before


def test_a_regime_checks_its_own_record_when_config_json_is_gone(workdir, config):
  _unfinish(workdir)
  os.remove(os.path.join(workdir, "config.json"))
  config.student.grad_clip = 1.0
  with pytest.raises(ConfigChanged, match=r"student\.grad_clip: 0\.0 -> 1\.0"):
    experiment.run(config, workdir)


def test_regimes_and_on_nonfinite_may_change(workdir, config):
  config.regimes = (REGIME, "online_teacher")
  config.student.steps = 3  # ... but nothing else
  with pytest.raises(ConfigChanged, match=r"student\.steps: 6 -> 3"):
    experiment.run(config, workdir)
  config.student.steps = 6
  config.regimes = (REGIME,)
  config.on_nonfinite = "skip"
  stamp = os.path.getmtime(os.path.join(workdir, REGIME, "done.json"))
  experiment.run(config, workdir)
  assert os.path.getmtime(os.path.join(workdir, REGIME, "done.json")) == stamp


def test_a_changed_mesh_or_report_threshold_reuses_finished_and_unfinished_work(workdir, config):
  markers = [
    os.path.join(workdir, "stage1", "info.json"),
    os.path.join(workdir, REGIME, "done.json"),
  ]
  stamps = [os.path.getmtime(m) for m in markers]
  config.mesh.data, config.hacking_threshold_pct = 1, 50.0  # one device: the same mesh
  summary = experiment.run(config, workdir)
  assert [os.path.getmtime(m) for m in markers] == stamps
  assert set(summary["regimes"]) == {REGIME}
  assert "50%" in open(os.path.join(workdir, "report.md")).read()
  _unfinish(workdir)  # an unfinished regime resumes from its checkpoint under the new mesh

  def untimed():
    return [
      {k: v for k, v in row.items() if not k.startswith(("time/", "throughput/"))}
      for row in read_metrics(os.path.join(workdir, REGIME, "metrics.jsonl"))
    ]

  rows = untimed()
  config.mesh.data = -1
  experiment.run(config, workdir)
  assert os.path.getmtime(markers[0]) == stamps[0]
  assert untimed() == rows


PROMPT_FILE_FIELDS = ("prompt_file", "prompt_field", "prompt_template", "chat_template")


def test_a_workdir_of_the_version_before_prompt_files_and_masks_resumes(workdir, config):
  """A workdir written before the prompt-file fields and the prompt masks existed (its
  config.json and stage records lack the fields, its arrays lack `prompt_mask`): the run reads
  the missing fields as their defaults and the masks as `prompts != 0`, reuses every finished
  stage, and resumes an unfinished regime; a missing field set to another value is refused."""
  config_json = os.path.join(workdir, "config.json")
  recorded = checkpoints.read_json(config_json)
  recorded["task"] = {k: v for k, v in recorded["task"].items() if k not in PROMPT_FILE_FIELDS}
  checkpoints.write_json(config_json, recorded)
  for name in ("oracle_data", "eval_oracle", "eval_teacher"):
    path = os.path.join(workdir, "stage1", f"{name}.npz")
    with np.load(path) as data:
      checkpoints.save_arrays(path, {k: data[k] for k in data.files if k != "prompt_mask"})
  marker = os.path.join(workdir, "stage1", "info.json")
  stamp = os.path.getmtime(marker)
  rows = read_metrics(os.path.join(workdir, REGIME, "metrics.jsonl"))
  _unfinish(workdir)
  summary = experiment.run(config, workdir)
  assert os.path.getmtime(marker) == stamp  # stage 1 reused
  assert set(summary["regimes"]) == {REGIME}
  resumed = read_metrics(os.path.join(workdir, REGIME, "metrics.jsonl"))
  assert [r["step"] for r in resumed] == [r["step"] for r in rows]
  checkpoints.write_json(config_json, recorded)
  config.task.prompt_template = "Q: {text}"
  with pytest.raises(ConfigChanged, match=r"task\.prompt_template: ''"):
    experiment.run(config, workdir)


def test_markers_written_under_other_stage_sections_are_reused_if_their_fields_agree(
  workdir, config
):
  """Markers of an earlier version, whose stages depended on the mesh and lacked the student's
  SFT fields: the fields they recorded agree, so the finished stages are reused."""
  markers = [
    os.path.join(workdir, "stage1", "info.json"),
    os.path.join(workdir, REGIME, "started.json"),
  ]
  for marker in markers:
    record = checkpoints.read_json(marker)
    fields = {k: v for k, v in record["fields"].items() if not k.startswith("student.learning")}
    record.update(
      fingerprint="0123456789abcdef", fields={**fields, "mesh": {"data": 8, "fsdp": 1, "model": 1}}
    )
    checkpoints.write_json(marker, record)
  dataset = os.path.join(workdir, "offline_dataset.npz")
  arrays = checkpoints.load_arrays(dataset)
  fields = {
    k: v
    for k, v in json.loads(str(arrays["fields"])).items()
    if not k.startswith("student.learning")
  }
  arrays.update(
    fingerprint=np.asarray("0123456789abcdef"),
    fields=np.asarray(json.dumps({**fields, "mesh": {"data": 8, "fsdp": 1, "model": 1}})),
  )
  checkpoints.save_arrays(dataset, arrays)
  _unfinish(workdir)  # so that the regime reads the offline dataset again
  stamps = [os.path.getmtime(m) for m in markers + [dataset]]
  experiment.run(config, workdir)
  assert [os.path.getmtime(m) for m in markers + [dataset]] == stamps
  config.loss.name = "rkl"  # a recorded field that differs is still refused
  with pytest.raises(ConfigChanged, match=r"loss\.name: 'fkl' -> 'rkl'"):
    experiment.run(config, workdir)


def test_a_checkpoint_of_another_structure_is_reported_as_such(tmp_path):
  directory = str(tmp_path / "checkpoints")
  checkpointer = checkpoints.RunCheckpointer(directory)
  checkpointer.save(3, {"w": jnp.zeros(4), "clip": {"count": jnp.zeros((), jnp.int32)}})
  checkpointer.wait()
  with pytest.raises(
    checkpoints.CheckpointMismatch,
    match=r"checkpoint 3 .* another structure \(clip/count is in the checkpoint "
    r"but not in this run's state\)",
  ):
    checkpoints.RunCheckpointer(directory).restore_latest({"w": jnp.zeros(4)})
  with pytest.raises(
    checkpoints.CheckpointMismatch,
    match=r"w has shape \(4,\) in the checkpoint, "
    r"\(5,\) in this run",
  ):
    checkpoints.RunCheckpointer(directory).restore_latest(
      {"w": jnp.zeros(5), "clip": {"count": jnp.zeros((), jnp.int32)}}
    )
  assert os.path.isdir(os.path.join(directory, "3"))  # not mistaken for damage


def test_a_damaged_checkpoint_is_set_aside_and_its_step_written_again(tmp_path):
  directory = str(tmp_path / "checkpoints")
  first = checkpoints.RunCheckpointer(directory)
  first.save(2, {"w": jnp.ones(4)})
  first.close()  # saves are asynchronous: the checkpoint is complete once closed
  shutil.rmtree(os.path.join(directory, "2", "default"))
  checkpointer = checkpoints.RunCheckpointer(directory)
  assert checkpointer.restore_latest({"w": jnp.zeros(4)}) is None
  assert os.path.isdir(os.path.join(directory, "damaged-2"))
  checkpointer.save(2, {"w": jnp.full(4, 2.0)})
  checkpointer.close()
  restored = checkpoints.RunCheckpointer(directory).restore_latest({"w": jnp.zeros(4)})
  assert float(restored["w"][0]) == 2.0


# Lost metric rows.


def test_a_finished_regime_whose_metrics_were_deleted_is_refused(workdir, config):
  os.remove(os.path.join(workdir, REGIME, "metrics.jsonl"))
  with pytest.raises(MetricsLost, match=r"lacks the rows of 3 evaluation\(s\) \(steps 0\.\.6\)"):
    experiment.run(config, workdir)


def test_an_unfinished_regime_with_a_cut_metrics_file_is_refused(workdir, config):
  _unfinish(workdir)
  path = os.path.join(workdir, REGIME, "metrics.jsonl")
  first = open(path).readline()
  open(path, "w").write(first)  # rows 3 and 6 gone; the checkpoint of step 6 stays
  with pytest.raises(MetricsLost, match=r"steps 3\.\.3"):
    experiment.run(config, workdir)


def test_a_metrics_file_deleted_during_a_run_is_written_back(tmp_path, caplog):
  writer = MetricsWriter(str(tmp_path))
  writer.write(0, {"a": 1.0})
  os.remove(writer.path)
  with caplog.at_level(logging.WARNING):
    writer.write(1, {"a": 2.0})
  writer.close()
  assert "was deleted or replaced" in caplog.text
  assert [r["step"] for r in read_metrics(writer.path)] == [0, 1]


# Non-finite values.


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_divergences_propagate_non_finite_logits(bad):
  good = jnp.array([[0.5, 1.0, 2.0, -1.0]])
  broken = good.at[0, 1].set(bad)
  for ref, student in ((broken, good), (good, broken)):
    values = [
      divergences.fkl(ref, student),
      divergences.rkl(ref, student),
      divergences.jsd(ref, student),
      divergences.jsd(ref, student, beta=0.0),
      divergences.jsd(ref, student, beta=1.0, normalized=True),
      *divergences.all_divergences(ref, student).values(),
    ]
    assert all(bool(jnp.isnan(v).all()) for v in values)
  masked = good.at[0, 1].set(-jnp.inf)  # a masked entry stays finite
  assert all(
    bool(jnp.isfinite(v).all()) for v in divergences.all_divergences(masked, masked).values()
  )


def _metrics(loss, grad_norm):
  return {"train/loss": jnp.float32(loss), "train/grad_norm": jnp.float32(grad_norm)}


def test_a_non_finite_step_stops_the_run_naming_the_step_and_the_last_checkpoint(tmp_path):
  checkpointer = checkpoints.RunCheckpointer(str(tmp_path))
  checkpointer.save(100, {"w": jnp.zeros(2)})
  watch = guards.StepWatch("offline", "stop")
  watch.check(101, _metrics(1.0, 2.0), checkpointer)
  with pytest.raises(
    guards.NonFiniteStep,
    match=r"training step 102 gave loss nan and gradient "
    r"norm inf.*checkpoint, step 100",
  ):
    watch.check(102, _metrics(math.nan, math.inf), checkpointer)
  skipping = guards.StepWatch("offline", "skip")
  for step in range(102, 102 + skipping.IN_A_ROW - 1):
    skipping.check(step, _metrics(math.nan, 1.0), checkpointer)
  with pytest.raises(
    guards.NonFiniteStep,
    match=r"every training step from 102 to 201 was "
    r"non-finite and skipped",
  ):
    skipping.check(102 + skipping.IN_A_ROW - 1, _metrics(math.nan, 1.0), checkpointer)


def test_a_skipped_step_is_left_out_of_the_logged_means():
  sums_fn = MetricSums(Partitioner(make_mesh()), DISTILL_METRICS)
  sums = sums_fn.empty()
  for loss in (1.0, math.nan, 3.0):
    metrics = {name: jnp.float32(loss) for name in sums_fn.names if name != "steps"}
    sums = sums_fn.add(sums, {**metrics, "train/grad_norm": jnp.float32(1.0)})
  row = MetricSums.row(sums, seconds=2.0)
  assert row["train/loss"] == 2.0 and row["train/proxy/fkl"] == 2.0
  assert row["train/tokens"] == 4.0 and row["throughput/train_tokens_per_s"] == 2.0
  assert MetricSums.row(sums_fn.empty(), 1.0) == {}


def test_a_collapsed_gradient_is_warned_about_once(tmp_path, caplog):
  checkpointer = checkpoints.RunCheckpointer(str(tmp_path))
  watch = guards.StepWatch("offline", "stop")
  with caplog.at_level(logging.WARNING):
    for step in range(2 * watch.IN_A_ROW):
      watch.check(step, _metrics(1.0, 0.0 if step >= 10 else 1.0), checkpointer)
  assert caplog.text.count("the gradient norm has been 0 since step 10") == 1


def test_skipping_a_non_finite_step_keeps_the_parameters():
  state = create_train_state({"w": jnp.ones(3)}, optax.adam(0.1))

  def step(state, grad):
    new = state.apply_gradients(grads={"w": grad})
    return new, {"train/loss": jnp.sum(grad), "train/grad_norm": jnp.linalg.norm(grad)}

  guarded = jax.jit(guards.skip_nonfinite(step, "skip"))
  kept, _ = guarded(state, jnp.array([1.0, jnp.nan, 0.0]))
  np.testing.assert_array_equal(kept.params["w"], state.params["w"])
  assert int(kept.step) == 1  # the data order goes on
  moved, _ = guarded(state, jnp.ones(3))
  assert not np.array_equal(moved.params["w"], state.params["w"])


@pytest.mark.slow
def test_a_diverging_run_stops_or_skips_and_its_json_stays_strict(tmp_path):
  config = micro_config()
  config.regimes = (REGIME,)
  config.student.learning_rate = 1e30
  config.student.init = "scratch"  # diverges in stage 2, not in the student's SFT
  with pytest.raises(guards.NonFiniteStep, match=r"training step \d+ gave loss nan"):
    experiment.run(config, str(tmp_path))
  config.on_nonfinite = "skip"  # the same workdir goes on, skipping
  experiment.run(config, str(tmp_path))

  def strict(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))

  lines = open(tmp_path / REGIME / "metrics.jsonl").read().splitlines()
  rows = [strict(line) for line in lines]
  assert rows[-1]["eval_oracle/golden/fkl"] is None and "nan" not in " ".join(lines).lower()
  for name in ("summary.json", "stage1/info.json", f"{REGIME}/done.json"):
    strict((tmp_path / name).read_text())


def test_metrics_rows_write_non_finite_values_as_null(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write(0, {"a": math.nan, "b": np.float32(math.inf), "c": 1.5})
  writer.close()
  assert json.loads(open(writer.path).read()) == {"step": 0, "a": None, "b": None, "c": 1.5}
  row = read_metrics(writer.path)[0]
  assert math.isnan(row["a"]) and math.isnan(row["b"]) and row["c"] == 1.5


def test_json_files_write_non_finite_numbers_as_null(tmp_path):
  path = str(tmp_path / "x.json")
  checkpoints.write_json(path, {"a": math.nan, "b": [np.float32(math.inf), 1.5], "c": "nan"})
  assert json.loads(open(path).read()) == {"a": None, "b": [None, 1.5], "c": "nan"}


# The sampler's edge cases.


@pytest.fixture(scope="module")
def tiny_model():
  model = T5(
    t5_config(
      "tiny",
      vocab_size=16,
      d_model=16,
      d_kv=4,
      d_ff=32,
      num_heads=2,
      num_encoder_layers=1,
      num_decoder_layers=1,
    )
  )
  return model, nn.unbox(init_params(model, jax.random.PRNGKey(0)))


def test_tiny_temperatures_and_nuclei_are_greedy_with_finite_log_probs(tiny_model):
  model, params = tiny_model
  prompts = jax.random.randint(jax.random.PRNGKey(1), (3, 4), 2, 16)
  mask = jnp.ones(prompts.shape, bool)
  greedy = sampling.sample(
    model,
    params,
    prompts,
    mask,
    jax.random.PRNGKey(0),
    max_length=4,
    tokens=T5_TOKENS,
    temperature=0.0,
  )
  for temperature, top_p in ((1e-10, 1.0), (1.0, 1e-39)):
    out = sampling.sample(
      model,
      params,
      prompts,
      mask,
      jax.random.PRNGKey(0),
      max_length=4,
      tokens=T5_TOKENS,
      temperature=temperature,
      top_p=top_p,
    )
    np.testing.assert_array_equal(out.tokens, greedy.tokens)
    assert np.all(np.asarray(out.logprobs) == 0.0)  # one token left, probability 1


def test_the_sampler_refuses_subnormal_temperatures_and_ids_outside_the_vocabulary(tiny_model):
  model, params = tiny_model
  prompts = jnp.full((2, 4), 3, jnp.int32)
  mask, key = jnp.ones(prompts.shape, bool), jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="temperature must be 0 .greedy. or finite and >="):
    sampling.sample(
      model, params, prompts, mask, key, max_length=4, tokens=T5_TOKENS, temperature=1e-40
    )
  for fn in (sampling.sample, sampling.sample_uncached):
    with pytest.raises(ValueError, match=r"prompt ids must be in \[0, 16\).*from 3 to 16"):
      fn(model, params, prompts.at[0, 0].set(16), mask, key, max_length=4, tokens=T5_TOKENS)


def test_an_empty_batch_gives_empty_responses(tiny_model):
  model, params = tiny_model
  out = sampling.sample(
    model,
    params,
    jnp.zeros((0, 4), jnp.int32),
    jnp.zeros((0, 4), bool),
    jax.random.PRNGKey(0),
    max_length=4,
    tokens=T5_TOKENS,
  )
  assert out.tokens.shape == out.mask.shape == out.logprobs.shape == (0, 4)


def test_a_damaged_metrics_line_loses_its_row_only(tmp_path, caplog):
  path = tmp_path / "metrics.jsonl"
  rows = [json.dumps({"step": s, "a": 1.0}) + "\n" for s in (0, 3, 6, 9)]
  rows[1] = "\x00garbage\n"
  path.write_text("".join(rows) + '{"step": 12, "a"')  # and a torn last line
  with caplog.at_level(logging.WARNING):
    assert [r["step"] for r in read_metrics(str(path))] == [0, 6, 9]
  assert "line 2 is not a metrics row (damaged)" in caplog.text and "line 5" not in caplog.text
  with pytest.raises(MetricsLost, match=r"lacks the rows of 1 evaluation\(s\) \(steps 3\.\.3\)"):
    check_rows(str(path), [0, 3, 6, 9], "delete it")


def test_a_regime_folder_deleted_while_a_checkpoint_is_written_is_one_line(tmp_path):
  """The regime's folder vanishes while Orbax writes a checkpoint (caught when a temporary
  checkpoint folder is seen): the run stops in one line naming the checkpoints (or, if the
  write had just finished, goes on), and the same command then finishes the run."""
  config = write_micro_config_file(
    tmp_path / "micro.py", "c.regimes = ('offline',)", "c.student.steps = 60", "c.eval_every = 20"
  )
  workdir = tmp_path / "run"
  command = [sys.executable, "-m", "th_distill.main", f"--config={config}", f"--workdir={workdir}"]
  process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
  checkpoints_dir = workdir / REGIME / "checkpoints"
  while process.poll() is None:
    names = os.listdir(checkpoints_dir) if checkpoints_dir.is_dir() else []
    if any("orbax-checkpoint-tmp" in name and name.split(".")[0] != "0" for name in names):
      shutil.rmtree(workdir / REGIME, ignore_errors=True)
      break
    time.sleep(0.002)
  _, stderr = process.communicate(timeout=300)
  errors_ = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert "Traceback" not in stderr and process.returncode in (0, 1), stderr[-3000:]
  if process.returncode == 1:
    assert len(errors_) == 1 and errors_[0].startswith(f"error: {checkpoints_dir} (or the folder")
  rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert (workdir / REGIME / "done.json").exists()
