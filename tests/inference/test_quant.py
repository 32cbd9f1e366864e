"""Weight quantization (inference/quant.py) on the tiny model: layers, the engine, the cache."""

import asyncio
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from inference import EngineConfig, Finished, GenerationParams, InvalidConfig, Request, build_engine, loading, quant
from inference.quant import GROUP_SIZE, Int4Linear, Int8Embedding, Int8Head, Int8Linear, minmax_int4, resolve_quant
from tests.inference_fixtures import load_tiny, tiny_config


def greedy(max_new_tokens: int) -> GenerationParams:
    return GenerationParams(temperature=0, max_new_tokens=max_new_tokens)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def streamed(engine, messages, params):
    async for event in engine.stream(Request(messages=messages, params=params)):
        if isinstance(event, Finished):
            return event.result
    raise AssertionError("no Finished event")


def test_min_max_groups_recover_q4_1_codes_exactly():
    # A weight made the way llama.cpp's Q4_1 stores it: per block of 32, a
    # scale, a minimum and codes 0..15 that use both ends of the range.
    torch.manual_seed(0)
    rows, columns = 8, 4 * GROUP_SIZE
    codes = torch.randint(0, 16, (rows, columns), dtype=torch.int32)
    codes[:, ::GROUP_SIZE], codes[:, 1::GROUP_SIZE] = 0, 15
    scale = torch.rand(rows, columns // GROUP_SIZE) * 0.01 + 1e-3
    low = torch.randn(rows, columns // GROUP_SIZE) * 0.05
    weight = (codes.view(rows, -1, GROUP_SIZE) * scale.unsqueeze(-1) + low.unsqueeze(-1)).view(rows, columns)

    found, found_scale, found_low = minmax_int4(weight)

    assert torch.equal(found, codes)
    torch.testing.assert_close(found_scale, scale)
    torch.testing.assert_close(found_low, low)


@pytest.mark.parametrize("layer_type", [Int4Linear, Int8Linear])
def test_quantized_layers_compute_what_their_weights_say(layer_type):
    torch.manual_seed(0)
    dense = torch.nn.Linear(128, 64)
    layer = layer_type.from_weight(dense.weight.detach(), dense.bias.detach())
    x = torch.randn(3, 5, 128)
    expected = dense(x)
    got = layer(x).float()
    assert got.shape == (3, 5, 64)
    # bf16 activations and 4 or 8 bits: close to the dense layer, not equal.
    error = (got - expected).abs().max() / expected.abs().max()
    assert error < (0.08 if layer_type is Int4Linear else 0.02)


@pytest.mark.skipif(
    not quant.int8_products_pay(),
    reason="no AVX-512 VNNI: the head keeps the weight-only kernel here (its own test), as oneDNN's int8 "
    "products come out wrong without VNNI (21% off on an AVX2 EPYC)",
)
def test_the_int8_head_multiplies_through_onednn_row_by_row():
    torch.manual_seed(0)
    weight = torch.randn(300, 64)
    head = Int8Head.from_weight(weight)
    x = torch.randn(5, 64, dtype=torch.bfloat16)
    weight_only = Int8Linear.from_weight(weight)(x).float()
    assert head.prepack()  # torch's x86 CPU build has oneDNN's int8 kernel
    got = head(x)
    assert got.dtype == torch.float32 and got.shape == (5, 300)
    # Activations in 8 bits too: close to the weight-only product, not equal.
    assert (got - weight_only).abs().max() / weight_only.abs().max() < 0.02
    # Integer products: a row comes out the same alone or in a batch.
    assert all(torch.equal(head.flat()(x[i : i + 1])[0], got[i]) for i in range(5))


def mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """Whether ``tensor``'s data lies in a mapping of the file ``path`` (per /proc/self/maps)."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == str(path):
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            if start <= address < end:
                return True
    return False


@pytest.mark.parametrize("scheme", ["int4", "int8"])
def test_a_quantized_engine_decodes_as_transformers_generate_on_the_same_weights(tiny_model_dir, scheme):
    model, tokenizer = load_tiny(tiny_model_dir)
    # The generic forward on both sides: in bf16 the lean step's attention rounds
    # differently (tests/inference/test_lean.py compares its logits), which can flip a
    # near-tie of this random model.
    engine = build_engine(model, tokenizer, tiny_config(quant=scheme, lean_decode=False), model_name="tiny-llama")
    try:
        assert (engine.info.quant, engine.info.dtype) == (scheme, "bfloat16")
        assert not any(type(m) is torch.nn.Linear for m in model.modules())
        messages = user("Tell me about the sea")
        ids = engine.prepare(Request(messages=messages, params=greedy(24))).ids
        with torch.inference_mode():
            reference = model.generate(
                input_ids=torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0
            )[0, len(ids) :].tolist()
        result = asyncio.run(streamed(engine, messages, greedy(24)))
        assert result.text == tokenizer.decode(reference, skip_special_tokens=True)
        assert engine.generate_batch([Request(messages=messages, params=greedy(24))])[0].text == result.text
    finally:
        engine.close()


@pytest.mark.parametrize("tied", [False, True])
def test_a_cached_start_builds_the_model_from_the_quantized_cache_alone(tiny_model_dir, tmp_path, monkeypatch, tied):
    monkeypatch.setattr(quant, "int8_products_pay", lambda: True)  # a CPU with VNNI, whatever this one has
    folder = tiny_model_dir
    if tied:
        # Embedding and LM head one matrix, as in SmolLM2.
        model, tokenizer = load_tiny(tiny_model_dir)
        model.config.tie_word_embeddings = True
        model.lm_head.weight = model.model.embed_tokens.weight
        folder = tmp_path / "tied"
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    config = EngineConfig(model=str(folder), device="cpu", quant="int4", cache_dir=tmp_path / "cache")
    first = loading.load_model(config)
    assert first.quant == "int4"
    [cache_file] = (tmp_path / "cache").glob("*-int4-*.safetensors")

    def forbidden(*args, **kwargs):
        raise AssertionError("a cached start must not load full-precision weights or quantize")

    monkeypatch.setattr(Int4Linear, "from_weight", forbidden)
    monkeypatch.setattr(loading, "_load_weights", forbidden)
    second = loading.load_model(config)
    assert not any(p.is_meta for p in second.model.parameters())
    embedding, head = second.model.get_input_embeddings(), second.model.get_output_embeddings()
    # A tied matrix is held once: the lookup reads the int8 head's rows.
    assert isinstance(embedding, Int8Embedding) is tied
    assert (embedding.weight.data_ptr() == head.weight.data_ptr()) is tied
    assert quant.weight_count(second.model) == quant.weight_count(first.model)
    # The head multiplies a prepacked copy; its plain rows, left to the lookup, are the cache file's pages.
    for loaded in (first, second):
        rows = loaded.model.get_output_embeddings().weight
        assert mapped_from(rows, cache_file.resolve())
        assert torch.equal(rows, load_file(cache_file)["lm_head.weight"])
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        torch.testing.assert_close(first.model(input_ids=ids).logits, second.model(input_ids=ids).logits)


def test_without_vnni_the_head_keeps_the_weight_only_kernel(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(quant, "int8_products_pay", lambda: False)
    config = EngineConfig(model=str(tiny_model_dir), device="cpu", quant="int4", cache_dir=tmp_path / "cache")
    for start in ("first", "cached"):
        head = loading.load_model(config).model.get_output_embeddings()
        assert isinstance(head, Int8Head) and head._packed is None, start
        x = torch.randn(3, head.in_features, dtype=torch.bfloat16)
        expected = torch.ops.aten._weight_int8pack_mm(x, head.weight, head.scales)
        assert torch.equal(head.flat()(x), expected), start


def test_int8_products_pay_exactly_where_the_cpu_has_avx512_vnni(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_vnni": False})
    assert not quant.int8_products_pay()
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_vnni": True})
    assert quant.int8_products_pay()


def test_auto_picks_int4_only_for_a_low_bit_gguf_on_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_quant("auto", cpu, from_low_bit_gguf=True) == "int4"
    assert resolve_quant("auto", cpu, from_low_bit_gguf=False) == "none"
    assert resolve_quant("auto", cuda, from_low_bit_gguf=True) == "none"
    assert resolve_quant("int8", cpu, from_low_bit_gguf=False) == "int8"
    with pytest.raises(InvalidConfig, match="runs on the CPU only"):
        resolve_quant("int4", cuda, from_low_bit_gguf=False)
    with pytest.raises(InvalidConfig, match="quant 'int3' is not one of auto, none, int8, int4"):
        EngineConfig(quant="int3")
    assert quant.QUANTS == ("auto", "none", "int8", "int4")
