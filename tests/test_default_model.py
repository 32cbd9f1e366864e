"""The real default model: the packaged SmolLM2 GGUF, converted once into var/models.

The first run on a machine converts the GGUF (about half a minute); later runs
load the cached safetensors folder, which this module checks by forbidding a
second conversion while loading.
"""

import pytest

from inference import Chunk, EngineConfig, Finished, GenerationParams, Request, load_engine, loading
from inference.config import DEFAULT_MODEL
from tests.inference_fixtures import MODEL_CACHE


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


async def ask(engine, question: str, max_new_tokens: int = 48):
    request = Request(
        messages=[{"role": "user", "content": question}],
        params=GenerationParams(temperature=0, max_new_tokens=max_new_tokens),
    )
    chunks, result = [], None
    async for event in engine.stream(request):
        if isinstance(event, Chunk):
            chunks.append(event.text)
        elif isinstance(event, Finished):
            result = event.result
    return chunks, result


def test_it_loads_the_packaged_model_from_the_cache(engine):
    info = engine.info
    assert (info.model_name, info.device, info.dtype) == ("smollm2-135m-instruct", "cpu", "float32")
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
async def test_multibyte_replies_stream_whole_characters(engine):
    chunks, result = await ask(engine, "Translate 'thank you' into Japanese.")
    assert any(ord(character) > 0x3000 for character in result.text), result.text
    assert "".join(chunks) == result.text
    assert not any("\ufffd" in chunk for chunk in chunks)
