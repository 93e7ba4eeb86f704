"""The seqio tasks on mocked TFDS / local task files, with a SentencePiece model trained here:
prompt format, length limits, EOS, disjoint splits, and the errors for missing or scarce data."""

import time
import zlib

import numpy as np
import pytest

pytest.importorskip("seqio")
pytest.importorskip("tensorflow_datasets")

import real_task_data  # noqa: E402

from th_distill.data import seqio_tasks, tasks  # noqa: E402
from th_distill.data.batch import PromptSet  # noqa: E402
from th_distill.data.pools import prompt_pools  # noqa: E402
from th_distill.data.vocabularies import SentencePieceVocabulary  # noqa: E402


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
  return real_task_data.train_sentencepiece(tmp_path_factory.mktemp("spm"))


def _task_config(micro, name, vocabulary, data_dir=""):
  micro.task.update(
    source="seqio",
    name=name,
    vocabulary=vocabulary,
    data_dir=data_dir,
    prompt_length=LENGTH,
    response_length=6,
  )
  micro.prompts.update(num_oracle=10, num_distill=12, num_eval=6)
  return micro


LENGTH = 24  # shorter than every prompt of the test data: all are trimmed


def _prompt(name, split, i):
  """The untrimmed prompt text of example i of `split` (task t's instance i for NI)."""
  spec = tasks.TASKS[name]
  if spec.tfds_name:
    return spec.prefix + real_task_data.sentence(split, i)
  return f"Definition: answer question\n\nInput: {real_task_data.sentence(split, i)}\nOutput:"


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_prompt_pools_format_trim_and_split(micro, vocabulary, tmp_path, name):
  data_dir = (
    real_task_data.write_natural_instructions(tmp_path / "ni")
    if name == "natural_instructions"
    else ""
  )
  config = _task_config(micro, name, vocabulary, data_dir)
  with real_task_data.mocked_tfds():
    pools = prompt_pools(config)
    first = next(seqio_tasks.examples(name, "train", {"inputs": 64, "targets": 64}, data_dir))
  vocab = SentencePieceVocabulary(vocabulary)

  assert all(isinstance(v, PromptSet) for v in pools.values()), "pools hold prompts with masks"
  assert {k: v.tokens.shape for k, v in pools.items()} == {
    "oracle": (10, LENGTH),
    "distill": (12, LENGTH),
    "eval": (6, LENGTH),
  }
  rows = np.concatenate([pool.tokens for pool in pools.values()])
  assert all(pool.mask.all() for pool in pools.values()), "every prompt fills the length"
  assert rows.dtype == np.int32 and len({r.tobytes() for r in rows}) == len(rows)  # disjoint
  assert np.all(rows[:, -1] == 1), "trimmed to the length limit, then EOS"
  assert np.all(rows[:, :-1] > 1)
  # Every prompt fills its row (trimmed, then EOS): every position is real.
  assert all(v.mask.dtype == bool and v.mask.all() for v in pools.values())

  def source(row):
    """(split, i) of the example a prompt row was trimmed from."""
    text = vocab.decode(row)
    candidates = (
      [("train", i) for i in range(40)] + [("validation", i) for i in range(12)]
      if name != "natural_instructions"
      else [(f"task{t}", i) for t in range(2) for i in range(real_task_data.NI_INSTANCES)]
    )
    found = [
      c for c in candidates if vocab.decode(vocab.encode(_prompt(name, *c))).startswith(text)
    ]
    assert len(found) == 1, (text, found)
    return found[0]

  if name == "natural_instructions":  # held out: the instances whose id hash is 0 mod 20

    def held_out(split, i):
      ident = real_task_data.instance_id(int(split[4:]), i)
      return zlib.crc32(ident.encode()) % tasks.VALIDATION_BUCKETS == 0

    assert all(held_out(*source(r)) for r in pools["eval"].tokens)
    assert not any(held_out(*source(r)) for r in pools["oracle"].tokens)
    assert {source(r)[0] for r in pools["oracle"].tokens} == {"task0", "task1"}, "tasks are mixed"
  else:  # TFDS order; oracle then distill from train, eval from validation
    assert [source(r) for r in pools["oracle"].tokens] == [("train", i) for i in range(10)]
    assert [source(r) for r in pools["distill"].tokens] == [("train", i) for i in range(10, 22)]
    assert [source(r) for r in pools["eval"].tokens] == [("validation", i) for i in range(6)]
    assert vocab.decode(first["targets"]) == real_task_data.reference("train", 0)
    assert vocab.decode(first["inputs"]) == _prompt(name, "train", 0)
  assert first["targets"][-1] == 1 and first["inputs"][-1] == 1


def test_too_few_prompts_names_the_pool_field(micro, vocabulary, tmp_path):
  config = _task_config(
    micro,
    "natural_instructions",
    vocabulary,
    real_task_data.write_natural_instructions(tmp_path / "ni"),
  )
  config.prompts.num_eval = 50
  with pytest.raises(ValueError, match=r"prompts\.num_eval: natural_instructions has only"):
    prompt_pools(config)


def test_missing_tfds_data_fails_at_once_saying_where_to_put_it(micro, vocabulary, tmp_path):
  config = _task_config(micro, "wmt14_en_de", vocabulary, str(tmp_path))
  start = time.time()
  with pytest.raises(seqio_tasks.TaskDataError) as error:
    prompt_pools(config)
  assert time.time() - start < 20, "no download retries"
  message = str(error.value)
  assert str(tmp_path) in message and "task.data_dir" in message
  assert "tfds build wmt14_translate/de-en --data_dir=DIR" in message
