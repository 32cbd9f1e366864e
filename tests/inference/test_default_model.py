"""The real default model: the packaged SmolLM2 GGUF, converted once into var/models.

The first run on a machine converts the GGUF (about half a minute); later runs
load the cached safetensors folder, which this module checks by forbidding a
second conversion while loading. On the CPU the default quantization (auto)
is int4 with an int8 head: these tests run that, and hold it to the quality
gate against float32.
"""

from pathlib import Path

import pytest
import torch

from inference import Chunk, EngineConfig, Finished, GenerationParams, Request, load_engine, loading
from inference.config import DEFAULT_MODEL
from inference.quality import NLL_ALLOWANCE, mean_nll, reference_replies
from inference.quant import GROUP_SIZE, minmax_int4
from tests.inference_fixtures import MODEL_CACHE

PROMPTS = Path(__file__).resolve().parents[2] / "bench" / "prompts.txt"


@pytest.fixture(scope="module")
def engine():
    loading.ensure_converted(loading.packaged_gguf(DEFAULT_MODEL), MODEL_CACHE)

    def convert_again(*args):
        raise AssertionError("the cached conversion should have been reused")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loading, "convert_gguf", convert_again)
        engine = load_engine(EngineConfig(cache_dir=MODEL_CACHE, device="cpu", num_threads=1))
    yield engine
    engine.close()


async def ask(engine, question: str | list[dict], max_new_tokens: int = 48):
    """A greedy reply to ``question`` (or to a whole conversation): (chunks, result)."""
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    request = Request(messages=messages, params=GenerationParams(temperature=0, max_new_tokens=max_new_tokens))
    chunks, result = [], None
    async for event in engine.stream(request):
        if isinstance(event, Chunk):
            chunks.append(event.text)
        elif isinstance(event, Finished):
            result = event.result
    return chunks, result


def test_it_loads_the_packaged_model_from_the_cache(engine):
    info = engine.info
    assert (info.model_name, info.device) == ("smollm2-135m-instruct", "cpu")
    assert (info.dtype, info.quant) == ("bfloat16", "int4")
    assert 130e6 < info.parameters < 140e6
    assert info.context_length == 8192
    assert info.load_seconds > 0


@pytest.mark.asyncio
async def test_it_knows_the_capital_of_france(engine):
    chunks, result = await ask(engine, "What is the capital of France?")
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert "".join(chunks) == result.text


@pytest.mark.asyncio
async def test_a_follow_up_reads_only_the_new_turn_and_answers_as_from_scratch(engine):
    prefixes = engine.scheduler.prefixes
    prefixes.clear()
    question = [{"role": "user", "content": "What is the capital of France?"}]
    _, first = await ask(engine, question)
    follow_up = [*question, {"role": "assistant", "content": first.text}, {"role": "user", "content": "And Italy's?"}]

    saved = prefixes.tokens_saved
    _, reused = await ask(engine, follow_up)
    # The first prompt and every reply token but the end-of-turn one (drawn, never read) were stored.
    assert prefixes.tokens_saved - saved == first.prompt_tokens + first.completion_tokens - 1
    prefixes.clear()
    _, from_scratch = await ask(engine, follow_up)
    assert reused.text == from_scratch.text


@pytest.mark.asyncio
async def test_multibyte_replies_stream_whole_characters(engine):
    chunks, result = await ask(engine, "Translate 'thank you' into Japanese.")
    assert any(ord(character) > 0x3000 for character in result.text), result.text
    assert "".join(chunks) == result.text
    assert not any("\ufffd" in chunk for chunk in chunks)


@pytest.fixture(scope="module")
def float32_engine():
    engine = load_engine(EngineConfig(cache_dir=MODEL_CACHE, device="cpu", num_threads=1, quant="none"))
    yield engine
    engine.close()


def test_int4_keeps_the_ggufs_own_codes(float32_engine):
    # The converted float32 weights are the GGUF's Q4_1 blocks dequantized;
    # min/max over the same 32 columns must find every block's codes again.
    layers = float32_engine.model.model.layers
    # q/k/v and gate/up are fused (lean.py); rows are independent, groups run along columns.
    for linear in (layers[0].self_attn.qkv_proj, layers[7].mlp.down_proj, layers[-1].mlp.gate_up_proj):
        weight = linear.weight.detach()
        codes, scale, low = minmax_int4(weight)
        rows, columns = weight.shape
        rebuilt = (codes.view(rows, -1, GROUP_SIZE) * scale.unsqueeze(-1) + low.unsqueeze(-1)).view(rows, columns)
        assert (rebuilt - weight).abs().max() < 1e-3 * scale.min()


def test_the_default_quantization_passes_the_quality_gate(engine, float32_engine):
    # The float32 model's own greedy replies, scored under int4 (bench/quality
    # reports the same figure on all prompts and longer replies).
    prompts = [line for line in PROMPTS.read_text().splitlines() if line.strip()][:8]
    replies = reference_replies(float32_engine, prompts, max_new_tokens=48)
    with torch.no_grad():
        reference = mean_nll(float32_engine.model, replies)
        quantized = mean_nll(engine.model, replies)
    assert quantized - reference <= NLL_ALLOWANCE, (reference, quantized)
