"""Offline stand-ins for the real tasks' inputs: a SentencePiece model trained on a small text,
TFDS mocked with split-dependent text, Natural Instructions task files, and T5 v1.1 checkpoints
in the Hugging Face layout written from our own parameters."""

import contextlib
import dataclasses
import json
import os
import zlib

import flax.linen as nn
import jax
import numpy as np

from th_distill.data.tasks import TASKS
from th_distill.models import T5, T5Config, init_params
from th_distill.models.hf_convert import params_to_hf_state_dict

_WORDS = (
  "the council said new rules would cover schools roads and hospitals across the region "
  "der rat sagte neue regeln gelten fuer schulen strassen und krankenhaeuser im land "
  "define answer question input output sentence translate summarize english german"
).split()
SPLIT_SIZES = {"train": 40, "validation": 12}
NI_INSTANCES = 120  # per task: 8 of the 240 ids hash to the validation bucket
PREFIXES = [spec.prefix for spec in TASKS.values()]


def sentence(split: str, i: int, words: int = 24) -> str:
  """A distinct sentence per (split, i): its opening words encode both."""
  rng = np.random.default_rng(zlib.crc32(f"{split} {i}".encode()))
  return f"{split} {i} " + " ".join(rng.choice(_WORDS, words))


def train_sentencepiece(directory) -> str:
  """A BPE model of at most 256 pieces with T5's ids (pad 0, EOS 1, unk 2); returns its path."""
  import sentencepiece

  text = os.path.join(directory, "corpus.txt")
  with open(text, "w") as f:
    for split, size in SPLIT_SIZES.items():
      f.writelines(
        f"{prefix}{sentence(split, i)} {reference(split, i)}\n"
        for i in range(size)
        for prefix in PREFIXES
      )
  prefix = os.path.join(directory, "spiece")
  sentencepiece.SentencePieceTrainer.train(
    input=text,
    model_prefix=prefix,
    vocab_size=256,
    hard_vocab_limit=False,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    model_type="bpe",
    character_coverage=1.0,
    minloglevel=2,
  )
  return prefix + ".model"


def _as_dataset(builder, split, **kwargs):
  """Mocked `builder._as_dataset`: SPLIT_SIZES[split] examples of the dataset's text fields."""
  import tensorflow as tf

  del kwargs
  inputs, targets = {"xsum": ("document", "summary"), "wmt14_translate": ("en", "de")}[builder.name]
  split, size = str(split), SPLIT_SIZES[str(split)]
  return tf.data.Dataset.from_tensor_slices(
    {
      inputs: [sentence(split, i) for i in range(size)],
      targets: [reference(split, i) for i in range(size)],
    }
  )


def reference(split: str, i: int) -> str:
  return "reference " + sentence(split, i, 4)


@contextlib.contextmanager
def mocked_tfds():
  """TFDS's xsum and wmt14_translate/de-en, offline, with different text in train and
  validation (TFDS's own mock repeats one split's examples in every split)."""
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(as_dataset_fn=_as_dataset):
    yield


def instance_id(task: int, i: int) -> str:
  return f"task{task:03d}-{i}"


def write_natural_instructions(directory) -> str:
  """Two task files in the public JSON layout; returns the folder."""
  os.makedirs(directory, exist_ok=True)
  for t in range(2):
    task = {
      "Definition": ["answer", "question"],
      "Positive Examples": [],
      "Instances": [
        {
          "id": instance_id(t, i),
          "input": sentence(f"task{t}", i),
          "output": [reference(f"task{t}", i)],
        }
        for i in range(NI_INSTANCES)
      ],
    }
    with open(os.path.join(directory, f"task{t:03d}_demo.json"), "w") as f:
      json.dump(task, f)
  return str(directory)


def random_params(cfg: T5Config, seed: int) -> dict:
  """Numpy draws in the shapes of a `cfg` model's parameters (no compilation)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: nn.unbox(init_params(T5(cfg), jax.random.PRNGKey(0))))
  return jax.tree_util.tree_map(
    lambda s: (rng.standard_normal(s.shape) / np.sqrt(s.shape[0])).astype(np.float32), shapes
  )


def write_t5x_checkpoint(directory, cfg: T5Config, seed: int = 0) -> dict:
  """A random `cfg` model with 1 encoder and 1 decoder layer in the T5X checkpoint format (msgpack
  `checkpoint` file, zarr arrays written by TensorStore; norms inline as T5X does for small
  arrays), named as t5x's T5 v1.1 network names them; returns its parameters."""
  import tensorstore
  from flax import serialization

  assert cfg.num_encoder_layers == cfg.num_decoder_layers == 1
  p = random_params(cfg, seed)
  enc, dec = p["encoder_layers_0"], p["decoder_layers_0"]

  def flat(x):
    return x.reshape(x.shape[0], -1)  # [E, H, K] -> [E, H*K]

  def out(x):
    return x.reshape(-1, x.shape[-1])  # [H, K, E] -> [H*K, E]

  def attention(a):
    return {
      "query": {"kernel": flat(a["query"])},
      "key": {"kernel": flat(a["key"])},
      "value": {"kernel": flat(a["value"])},
      "out": {"kernel": out(a["out"])},
    }

  def mlp(layer):
    return {k: {"kernel": layer["mlp"][k]} for k in ("wi_0", "wi_1", "wo")}

  target = {
    "token_embedder": {"embedding": p["token_embedder"]},
    "encoder": {
      "relpos_bias": {"rel_embedding": p["encoder_relpos"]["rel_embedding"]},
      "layers_0": {
        "pre_attention_layer_norm": enc["attention_norm"],
        "attention": attention(enc["attention"]),
        "pre_mlp_layer_norm": enc["mlp_norm"],
        "mlp": mlp(enc),
      },
      "encoder_norm": p["encoder_norm"],
    },
    "decoder": {
      "relpos_bias": {"rel_embedding": p["decoder_relpos"]["rel_embedding"]},
      "layers_0": {
        "pre_self_attention_layer_norm": dec["self_attention_norm"],
        "self_attention": attention(dec["self_attention"]),
        "pre_cross_attention_layer_norm": dec["cross_attention_norm"],
        "encoder_decoder_attention": attention(dec["cross_attention"]),
        "pre_mlp_layer_norm": dec["mlp_norm"],
        "mlp": mlp(dec),
      },
      "decoder_norm": p["decoder_norm"],
      "logits_dense": {"kernel": p["logits_kernel"]},
    },
  }
  os.makedirs(directory, exist_ok=True)

  def to_tensorstore(path, value):
    if value.ndim < 2:
      return value
    name = "target." + ".".join(k.key for k in path)
    metadata = {
      "shape": list(value.shape),
      "chunks": list(value.shape),
      "dtype": "<f4",
      "compressor": {"id": "gzip"},
    }
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": name}, "metadata": metadata}
    store = tensorstore.open(
      {**spec, "kvstore": {"driver": "file", "path": os.path.join(directory, name)}}, create=True
    ).result()
    store.write(value).result()
    return {**spec, "dtype": "float32"}

  target = jax.tree_util.tree_map_with_path(to_tensorstore, target)
  state = {"target": target, "state": {"step": np.int32(0)}}
  with open(os.path.join(directory, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize(state))
  return p


def write_hf_checkpoint(directory, cfg: T5Config, seed: int = 0) -> dict:
  """A random `cfg` model saved as config.json + model.safetensors; returns its parameters."""
  from safetensors.numpy import save_file

  params = random_params(cfg, seed)
  os.makedirs(directory, exist_ok=True)
  state = params_to_hf_state_dict(params, cfg)
  save_file(
    {k: v for k, v in state.items() if "embed_tokens" not in k},
    os.path.join(directory, "model.safetensors"),
  )
  c = dataclasses.asdict(cfg)
  hf = {
    "model_type": "t5",
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "vocab_size": c["vocab_size"],
    "d_model": c["d_model"],
    "d_kv": c["d_kv"],
    "d_ff": c["d_ff"],
    "num_heads": c["num_heads"],
    "num_layers": c["num_encoder_layers"],
    "num_decoder_layers": c["num_decoder_layers"],
    "relative_attention_num_buckets": c["relative_attention_num_buckets"],
    "relative_attention_max_distance": c["relative_attention_max_distance"],
    "layer_norm_epsilon": c["layer_norm_eps"],
    "dropout_rate": 0.1,
  }
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf, f)
  return params
