"""seqio Tasks for XSum, WMT-14 en-de and Natural Instructions, and prompt pools drawn from them.

Imports TensorFlow, seqio and TFDS (the `seqio` extra, `pip install -e '.[seqio]'`): only
`th_distill.data.pools.prompt_pools` imports this module, for `task.source = 'seqio'`. Prompt formats and
splits are in `th_distill.data.tasks`.

`register(name, vocabulary_path, data_dir)` adds the seqio Task `th_distill_<name>` (features
`inputs` and `targets`, both with EOS; seqio trims them to the sequence lengths it is given).
TFDS data is read as it is in `data_dir` and never downloaded: a dataset that is not there is a
`TaskDataError` saying how to build it, at once.

`prompt_pools(task, sizes)` returns the pipeline's disjoint pools of distinct prompts
(`PromptSet`s: the mask from each prompt's real length), in the
datasets' stored order (TFDS shuffles examples when it builds a dataset; Natural Instructions is
permuted with a fixed seed), so they are the same for every `config.seed`.
"""

from __future__ import annotations

import functools
import json
import zlib
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from th_distill.data.batch import PromptSet
from th_distill.data.tasks import TASKS, VALIDATION_BUCKETS, TaskSpec, natural_instructions_files
from th_distill.data.vocabularies import SentencePieceVocabulary

tf.config.set_visible_devices([], "GPU")  # the accelerators belong to JAX

SPLITS = ("train", "validation")


class TaskDataError(FileNotFoundError):
  """A task's data is not where the config says; the message says how to prepare it."""


def seqio_name(name: str) -> str:
  return f"th_distill_{name}"


@functools.lru_cache(maxsize=2)
def _natural_instructions(data_dir: str) -> dict[str, dict[str, list[str]]]:
  """{split: {'definition', 'input', 'output'}: strings} of every instance in `data_dir`."""
  splits = {split: {"definition": [], "input": [], "output": []} for split in SPLITS}
  for path in natural_instructions_files(data_dir):
    with open(path, encoding="utf-8") as f:
      task = json.load(f)
    definition = " ".join(task["Definition"])
    for instance in task["Instances"]:
      held_out = zlib.crc32(instance["id"].encode()) % VALIDATION_BUCKETS == 0
      rows = splits["validation" if held_out else "train"]
      rows["definition"].append(definition)
      rows["input"].append(instance["input"])
      rows["output"].append(instance["output"][0] if instance["output"] else "")
  for rows in splits.values():  # mix the tasks: files hold one task each
    order = np.random.default_rng(0).permutation(len(rows["input"]))
    for key in rows:
      rows[key] = [rows[key][i] for i in order]
  return splits


def _source(spec: TaskSpec, data_dir: str) -> seqio.DataSource:
  if spec.tfds_name:
    return seqio.TfdsDataSource(
      spec.tfds_name, tfds_data_dir=data_dir or None, splits=SPLITS, read_only=True
    )  # read_only: never download

  def load(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
    del shuffle_files, seed
    rows = _natural_instructions(data_dir)[split]
    return tf.data.Dataset.from_tensor_slices(
      {k: tf.constant(v, tf.string) for k, v in rows.items()}
    )

  return seqio.FunctionDataSource(load, splits=SPLITS)


def _formatter(spec: TaskSpec):
  @seqio.map_over_dataset
  def format_example(ex):
    if spec.tfds_name:
      inputs = tf.strings.join([spec.prefix, ex[spec.inputs_key]])
    else:
      inputs = tf.strings.join(
        [spec.prefix, ex["definition"], "\n\nInput: ", ex["input"], "\nOutput:"]
      )
    return {"inputs": inputs, "targets": ex[spec.targets_key]}

  return format_example


def register(name: str, vocabulary_path: str, data_dir: str = "") -> seqio.Task:
  """Registers (again, if needed) the seqio Task of `name` (a key of `tasks.TASKS`)."""
  spec = TASKS[name]
  vocabulary = seqio.SentencePieceVocabulary(vocabulary_path)
  features = {key: seqio.Feature(vocabulary, add_eos=True) for key in ("inputs", "targets")}
  seqio.TaskRegistry.remove(seqio_name(name))  # a new vocabulary or data directory replaces it
  return seqio.TaskRegistry.add(
    seqio_name(name),
    source=_source(spec, data_dir),
    output_features=features,
    preprocessors=[
      _formatter(spec),
      seqio.preprocessors.tokenize,
      seqio.preprocessors.append_eos_after_trim,
    ],
  )


def examples(name: str, split: str, lengths: dict[str, int], data_dir: str = ""):
  """Numpy examples of the registered task `name`'s `split`, trimmed to `lengths`;
  TaskDataError if its data is missing."""
  try:
    dataset = seqio.get_mixture_or_task(seqio_name(name)).get_dataset(
      lengths, split=split, shuffle=False, use_cached=False, try_in_mem_cache=False, num_epochs=1
    )
  except AssertionError as e:  # TFDS: "could not find data in ..."
    spec = TASKS[name]
    where = data_dir or "TFDS's default directory ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    raise TaskDataError(
      f"{spec.tfds_name} is not prepared in {where} (task.data_dir). Nothing is downloaded "
      f"at run time: build it with {spec.build}, then pass --config.task.data_dir=DIR. "
      f"TFDS said: {e}"
    ) from None
  return dataset.as_numpy_iterator()


def prompt_pools(task: Any, sizes: dict[str, int]) -> dict[str, PromptSet]:
  """Disjoint pools of distinct prompts {'oracle', 'distill', 'eval'}: `PromptSet`s [size,
  prompt_length], right-padded with the vocabulary's pad id (T5's: 0), the mask True on the real
  tokens (EOS, which ends each prompt, included). oracle and distill come from `train`, eval from
  `validation` (minus any prompt also in train's pools)."""
  register(task.name, task.vocabulary, task.data_dir)
  lengths = {"inputs": task.prompt_length, "targets": task.response_length}
  pad_id = SentencePieceVocabulary(task.vocabulary).special_tokens.pad_id
  seen: set[tuple[int, ...]] = set()

  def distinct(split: str, count: int, field: str) -> PromptSet:
    rows = []
    for example in examples(task.name, split, lengths, task.data_dir):
      row = tuple(int(i) for i in example["inputs"])
      if row not in seen:
        seen.add(row)
        rows.append(list(row))
        if len(rows) == count:
          break
    if len(rows) < count:
      raise ValueError(
        f"{field}: {task.name} has only {len(rows)} distinct prompts of "
        f"{task.prompt_length} tokens in its {split} split, {count} asked."
      )
    return PromptSet.of_rows(rows, task.prompt_length, pad_id)

  train = distinct(
    "train", sizes["oracle"] + sizes["distill"], "prompts.num_oracle + prompts.num_distill"
  )
  return {
    "oracle": train[: sizes["oracle"]],
    "distill": train[sizes["oracle"] :],
    "eval": distinct("validation", sizes["eval"], "prompts.num_eval"),
  }
