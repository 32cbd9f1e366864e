"""Model fixtures: a tiny model of the real architecture, and engines serving it.

Registered in tests/conftest.py (``pytest_plugins``). Everything is offline:

* ``tiny_model_dir`` (session): a 2-layer LlamaForCausalLM (SmolLM2's
  architecture) with random weights, saved with the real SmolLM2 tokenizer and
  chat template. The tokenizer comes from the packaged GGUF, converted once into
  ``var/models`` (the same cache the real model uses, so later runs reuse it).
* ``tiny_engine`` (session): a TransformersEngine on that model,
  max_batch_size 4, max_queue 8; closed at the end of the session. Greedy
  decoding on it is deterministic.
* ``make_engine`` (function): ``make_engine(max_batch_size=1, max_queue=1)``
  builds a fresh engine (its own model copy) with those EngineConfig fields;
  every engine it made is closed after the test.

The end-of-turn token's output row is zeroed, so greedy replies never stop
early and run to max_new_tokens: tests that need a long reply (to stop it, or
to join it) do not depend on where a random model happens to emit it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_CACHE = REPO_ROOT / "var" / "models"
TINY_CONTEXT = 1024
TINY_SYSTEM_PROMPT = "You are a helpful assistant."


def pytest_configure(config) -> None:
    """torch at one thread in the test processes; the engines and the servers they start set their own.

    `make test` runs one xdist worker per core, so a test's own torch work (the tiny model's
    build, the quality gate's scoring, a forward pass) at two threads only waits for the other
    worker's core: OpenMP's threads spin at every barrier. Measured on 227 in-process model
    tests on 2 workers: 105 -> 84 CPU-s and 57 -> 46 s.
    """
    torch.set_num_threads(1)


def default_model_tokenizer():
    """The packaged SmolLM2 tokenizer (chat template included), converted once into var/models."""
    from inference.config import DEFAULT_MODEL
    from inference.loading import ensure_converted, load_tokenizer, packaged_gguf

    folder = ensure_converted(packaged_gguf(DEFAULT_MODEL), MODEL_CACHE)
    return load_tokenizer(str(folder))


def build_tiny_model(tokenizer, context_length: int = TINY_CONTEXT):
    """A randomly initialised 2-layer Llama of SmolLM2's shape family, in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=context_length,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        # Logit 0 for the end-of-turn token never wins a greedy step, so
        # replies run to max_new_tokens (see the module docstring).
        model.lm_head.weight[tokenizer.eos_token_id] = 0
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder with the tiny model and the real tokenizer, loadable with from_pretrained."""
    tokenizer = default_model_tokenizer()
    folder = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def load_tiny(folder: Path):
    """(model, tokenizer) loaded from ``folder`` on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, tokenizer


def tiny_config(**fields):
    """An EngineConfig for the tiny model; ``fields`` override the defaults here."""
    from inference import EngineConfig

    # One intra-op thread: the tiny model's operations are too small to gain
    # from more, and on a busy CI box extra threads only wait for each other.
    settings = {
        "model": "tiny-llama",
        "device": "cpu",
        "max_batch_size": 4,
        "max_queue": 8,
        "default_system_prompt": TINY_SYSTEM_PROMPT,
        "num_threads": 1,
    }
    settings.update(fields)
    return EngineConfig(**settings)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    """(model, tokenizer) of the tiny model, shared by the session."""
    return load_tiny(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model):
    """An engine serving the tiny model (max_batch_size 4, max_queue 8), for the whole session."""
    from inference import build_engine

    model, tokenizer = tiny_model
    engine = build_engine(model, tokenizer, tiny_config(), model_name="tiny-llama")
    yield engine
    engine.close()


@pytest.fixture
def make_engine(tiny_model_dir):
    """A factory: make_engine(**EngineConfig fields) -> a fresh engine on its own tiny model copy."""
    from inference import build_engine

    engines = []

    def make(**fields):
        model, tokenizer = load_tiny(tiny_model_dir)
        engine = build_engine(model, tokenizer, tiny_config(**fields), model_name="tiny-llama")
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()
