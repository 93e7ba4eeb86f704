"""Vocabularies against `transformers`: a byte-level BPE trained here (ids 0 and 1 are `!` and
`"`) saved with a tiny Qwen2, read with `tokenizers`; its special tokens from the files, encode /
decode / chat template equal to `transformers.PreTrainedTokenizerFast` loaded from the same
directory."""

import json
import os

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import hf_artifacts  # noqa: E402

from th_distill.data import chat_template  # noqa: E402
from th_distill.data.vocabularies import (  # noqa: E402
  HuggingFaceVocabulary,
  SyntheticVocabulary,
  read_vocabulary,
)
from th_distill.models import hf_tokens  # noqa: E402
from th_distill.models.tokens import SpecialTokens  # noqa: E402

TEXTS = [
  '!"Stop! now" then',
  'She said "no" twice!',
  "Numbers like 12, 345 and 6789.",
  "unseen wörds ünd émojis 🙂 too",
]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
  return hf_artifacts.write_qwen2(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def reference(qwen):
  return transformers.PreTrainedTokenizerFast.from_pretrained(qwen.directory)


def test_special_tokens_come_from_the_files(qwen):
  ids = qwen.ids
  assert (ids["!"], ids['"']) == (0, 1)
  vocab = HuggingFaceVocabulary(qwen.directory)
  # EOS <|im_end|> (tokenizer_config.json) first, then generation_config.json's list.
  assert vocab.special_tokens == SpecialTokens(
    pad_id=ids["<|endoftext|>"], stop_ids=(ids["<|im_end|>"], ids["<|endoftext|>"]), bos_id=None
  )
  assert vocab.vocab_size == len(qwen.tokenizer) == 323
  assert vocab.fits(qwen.model.config.vocab_size) and not vocab.fits(322)


def test_encode_and_decode_equal_transformers(qwen, reference):
  vocab = HuggingFaceVocabulary(qwen.directory)
  for text in TEXTS:
    ids = vocab.encode(text)
    assert ids == reference.encode(text)
    assert vocab.decode(ids) == reference.decode(ids) == text
  assert vocab.encode(TEXTS[0])[:2] == [0, 1]  # '!' and '"': ordinary tokens, decoded as such


def test_decode_reads_the_real_tokens_only(qwen):
  vocab = HuggingFaceVocabulary(qwen.directory)
  special = vocab.special_tokens
  ids = vocab.encode(TEXTS[0])
  pad, eos = special.pad_id, special.eos_id
  # A response: EOS then padding; without a mask it ends at the first stop id.
  assert vocab.decode(ids + [eos, pad, 0, 1]) == TEXTS[0]
  assert vocab.decode(ids + [special.stop_ids[1], 5]) == TEXTS[0]
  # A left-padded prompt with its mask: id 0 ('!') at the front is kept, the padding is not.
  row = np.array([pad, pad, *ids])
  assert vocab.decode(row, row != pad) == TEXTS[0]
  # A chat prompt's <|im_end|> inside the masked span is real; a response's final EOS is not text.
  chat = vocab.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
  assert vocab.decode(chat, np.ones(len(chat), bool)).count("<|im_end|>") == 1
  assert vocab.decode(ids + [eos], [True] * (len(ids) + 1)) == TEXTS[0]
  # An embedding row beyond the tokenizer (Qwen pads its embedding) decodes to nothing.
  assert vocab.decode(ids + [vocab.vocab_size + 3]) == TEXTS[0]


def test_a_tokenizer_without_a_pad_token_pads_with_its_eos(tmp_path):
  hf_artifacts.write_tokenizer(tmp_path, pad_token=None, bos_token="<|endoftext|>")
  vocab = read_vocabulary(tmp_path)
  eos, bos = hf_tokens.vocabulary_ids(tmp_path)["<|im_end|>"], 320
  assert vocab.special_tokens == SpecialTokens(pad_id=eos, stop_ids=(eos,), bos_id=bos)
  # An int eos_token_id in config.json (no generation_config.json) is a stop id too.
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"eos_token_id": 7, "pad_token_id": 9}, f)
  assert hf_tokens.special_tokens(tmp_path) == SpecialTokens(9, (eos, 7), bos)


def test_a_named_token_outside_the_tokenizer_is_refused(tmp_path):
  hf_artifacts.write_tokenizer(tmp_path)
  path = tmp_path / "tokenizer_config.json"
  config = json.loads(path.read_text())
  path.write_text(json.dumps({**config, "pad_token": "<pad>"}))
  with pytest.raises(ValueError, match="pad_token = '<pad>' .* is not a token"):
    read_vocabulary(tmp_path)
  os.remove(tmp_path / "tokenizer.json")
  with pytest.raises(FileNotFoundError, match="holds no tokenizer.json, spiece.model"):
    read_vocabulary(tmp_path)


TEMPLATE_WITH_VARIABLES = (
  "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
  "{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role') }}{% endif %}\n"
  "  <{{ m['role'] }}>{{ m['content'] | tojson }}{{ eos_token }}\n"
  "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.mark.parametrize("template", [hf_artifacts.CHATML, TEMPLATE_WITH_VARIABLES])
def test_the_chat_template_renders_as_transformers_does(tmp_path, template):
  tokenizer = hf_artifacts.write_tokenizer(
    tmp_path, chat_template=template, bos_token="<|endoftext|>"
  )
  reference = transformers.PreTrainedTokenizerFast.from_pretrained(tmp_path)
  vocab = HuggingFaceVocabulary(tmp_path)
  assert vocab.chat_template == tokenizer.chat_template
  for text in TEXTS:
    message = [{"role": "user", "content": text}]
    rendered = chat_template.render_prompt(vocab.chat_template, text, vocab.token_strings)
    assert rendered == reference.apply_chat_template(
      message, tokenize=False, add_generation_prompt=True
    )
    ids = reference.apply_chat_template(message, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert vocab.encode(rendered, add_special_tokens=False) == list(ids)


def test_synthetic_and_sentencepiece_vocabularies(tmp_path):
  vocab = SyntheticVocabulary(16)
  assert vocab.decode([5, 3, 1, 7, 0]) == "<5> <3>"
  assert vocab.decode([0, 5, 1], [True, True, True]) == "<0> <5>"  # 0 is a token where masked
  assert vocab.encode(vocab.decode([4, 0, 9])) == [4, 0, 9]
  sentencepiece = pytest.importorskip("sentencepiece")
  (tmp_path / "corpus.txt").write_text("\n".join(hf_artifacts.CORPUS))
  # SentencePiece's own defaults (unk 0, bos 1, eos 2, no pad) are read as they are.
  sentencepiece.SentencePieceTrainer.train(
    input=str(tmp_path / "corpus.txt"),
    model_prefix=str(tmp_path / "default"),
    vocab_size=64,
    hard_vocab_limit=False,
    minloglevel=2,
  )
  vocab = read_vocabulary(tmp_path / "default.model")
  assert vocab.special_tokens == SpecialTokens(pad_id=2, stop_ids=(2,))
  ids = vocab.encode("the vote was taken")
  assert vocab.decode(ids + [2, 2, 0]) == "the vote was taken"
