"""th_distill: teacher hacking in language-model distillation, in JAX/Flax."""

import setuptools

# The repository on GitHub: the README's Colab badges and the notebooks' REPO_URL form fields and
# figure links name the same one (tests/commands/test_notebooks.py checks that they agree).
REPO_URL = "https://github.com/YOUR_ORG/th_distill"

TEST = [
  "pytest>=8",
  "pytest-xdist>=3",
  "hypothesis>=6",
  "torch==2.13.0",
  "transformers>=4.40",
  "safetensors>=0.4",
  "tokenizers>=0.15",  # Hugging Face tokenizer.json (th_distill.data.vocabularies)
  "jinja2>=3.1.6",  # chat templates (th_distill.data.chat_template), as transformers renders them
  "nbclient>=0.10",
  "nbformat>=5.9",
  "ipykernel>=6.29",
  "ruff==0.17.6",  # the formatter and linter .ci/run runs (ruff.toml)
]

setuptools.setup(
  name="th_distill",
  version="0.1.0",
  description="Teacher hacking in language-model distillation: oracle -> teacher -> student, in JAX/Flax.",
  long_description=open("README.md", encoding="utf-8").read(),
  long_description_content_type="text/markdown",
  url=REPO_URL,
  packages=setuptools.find_packages(include=["th_distill", "th_distill.*"]),
  python_requires=">=3.10",
  install_requires=[
    "jax>=0.7",
    "flax>=0.10",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.6",
    "ml_collections>=0.1.1",
    "absl-py>=2.0",
    "numpy>=1.26",
    "scipy>=1.11",  # th_distill.results.paired's t-test (JAX needs it too)
    "matplotlib>=3.8",
    "tensorboardX>=2.6",
  ],
  extras_require={
    "test": TEST,
    # Hugging Face checkpoints, tokenizers (tokenizer.json) and chat templates.
    "hf": [
      "torch==2.13.0",
      "transformers>=4.40",
      "safetensors>=0.4",
      "tokenizers>=0.15",
      "jinja2>=3.1.6",
    ],
    "bench": ["torch==2.13.0", "transformers>=4.40", "safetensors>=0.4"],
    # Real tasks (th_distill.data.seqio_tasks); pulls TensorFlow (about 2 GB), CPU is enough.
    "seqio": [
      "seqio==0.0.20",
      "tensorflow-datasets==4.9.10",
      "tensorflow-text==2.21.1",
      "tensorflow==2.21.0",
      "sentencepiece>=0.2,<0.3",
    ],
  },
)
