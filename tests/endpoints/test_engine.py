"""The endpoint engine and the registry against a real llama.cpp server (llama-cpp-python's)."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx2
import pytest

from conversations.endpoints import registry
from conversations.endpoints.registry import Registry
from inference import Chunk, Finished, GenerationParams, ModelUnavailable, Request, Started

pytestmark = pytest.mark.asyncio

HELLO = [{"role": "user", "content": "What is the capital of France?"}]
STORY = [{"role": "user", "content": "Write a very long story about a dragon."}]


def registry_of(*servers, timeout: float = 30.0) -> Registry:
    endpoints = {f"llama{n}": {"url": server.url, "key": ""} for n, server in enumerate(servers)}
    models = Registry(endpoints=endpoints, timeout=timeout, admin_endpoints=False)
    models.refresh()
    return models


def greedy(max_new_tokens: int) -> GenerationParams:
    return GenerationParams.from_dict({"temperature": 0, "max_new_tokens": max_new_tokens})


async def events_of(engine, request: Request) -> list:
    return [event async for event in engine.stream(request)]


def counted_http_clients(monkeypatch) -> list:
    """The HTTP clients made from now on (making one builds an SSL context: 25 ms of CPU on the event loop)."""
    made = []
    make = httpx2.AsyncClient.__init__

    def counting(self, *args, **kwargs) -> None:
        made.append(self)
        make(self, *args, **kwargs)

    monkeypatch.setattr(httpx2.AsyncClient, "__init__", counting)
    return made


async def test_a_reply_streams_as_the_local_engines_do_and_joins_to_its_result(llama_server, monkeypatch):
    # llama-cpp-python answers /tokenize only after the generation under way; on a loaded machine that can
    # take longer than the second a reply's end waits before it estimates. This test is about the count.
    monkeypatch.setattr(registry, "TOKENIZE_TIMEOUT_SECONDS", 60.0)
    made = counted_http_clients(monkeypatch)
    models = registry_of(llama_server)
    events = await events_of(models.engine("smollm2"), Request(HELLO, greedy(16), affinity="c1"))
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    chunks = [event.text for event in events if isinstance(event, Chunk)]
    result = events[-1].result
    assert len(chunks) > 1 and "".join(chunks) == result.text != ""
    assert result.finish_reason == "length"
    # llama-cpp-python sends no usage: counted with its own tokenizer (/extras/tokenize).
    assert 0 < result.completion_tokens <= 17 and result.prompt_tokens > 0
    assert models.endpoints()[0].tokenize == 1
    # Greedy: the same request gets the same text.
    again = await events_of(models.engine("smollm2"), Request(HELLO, greedy(16), affinity="c2"))
    assert again[-1].result.text == result.text
    # Both replies and both token counts went through one client, made once for the loop.
    assert len(made) == 1


async def test_a_stop_closes_the_stream_and_the_server_goes_idle(llama_server):
    models = registry_of(llama_server)
    request = Request(STORY, greedy(2000), affinity="c1")
    received = 0
    async for event in models.engine("smollm2").stream(request):
        if isinstance(event, Chunk):
            received += 1
            if received == 3:
                request.cancel.set()
        if isinstance(event, Finished):
            result = event.result
    assert result.finish_reason == "cancelled" and result.completion_tokens < 20
    # The server noticed the closed stream: it uses (nearly) no CPU any more.
    await asyncio.sleep(0.5)  # measuring CPU needs an interval of wall time; nothing to await
    before = llama_server.cpu_seconds()
    await asyncio.sleep(1.0)
    assert llama_server.cpu_seconds() - before < 0.2


async def test_discovery_marks_an_endpoint_down_and_up_again_without_a_restart(llama_factory):
    server = llama_factory()
    models = registry_of(server)
    assert models.served() == {"smollm2": ["llama0"]} and models.health()["llama0"]["status"] == "ok"
    server.stop()
    models.refresh(force=True)
    assert models.health()["llama0"]["status"] == "down" and not models.available("smollm2")
    port = server.port
    llama_factory(port=port)
    models.refresh(force=True)
    assert models.health()["llama0"] == {"status": "ok", "models": ["smollm2"]} and models.available("smollm2")


async def test_a_turn_fails_over_to_another_replica_before_its_first_token(llama_factory, llama_server):
    first, second = llama_factory(), llama_server
    models = registry_of(first, second)
    # A conversation whose preferred replica is the first one.
    affinity = next(f"c{n}" for n in range(100) if models.route("smollm2", f"c{n}")[0].name == "llama0")
    first.stop()  # the registry still believes it up
    events = await events_of(models.engine("smollm2"), Request(HELLO, greedy(8), affinity=affinity))
    assert events[-1].result.finish_reason == "length" and events[-1].result.text
    assert models.health()["llama0"]["status"] == "down"  # the failed replica is marked down
    assert [e.name for e in models.route("smollm2", affinity)] == ["llama1", "llama0"]


async def test_replicas_keep_each_conversation_on_one_of_them(llama_server):
    models = registry_of(llama_server, llama_server)  # two endpoints for the router, one server behind them
    firsts = {models.route("smollm2", f"c{n}")[0].name for n in range(40)}
    assert firsts == {"llama0", "llama1"}  # conversations spread over both
    assert all(models.route("smollm2", "c7")[0].name == models.route("smollm2", "c7")[0].name for _ in range(5))


async def test_a_hung_endpoint_fails_the_turn_after_the_timeout(llama_factory):
    server = llama_factory()
    models = registry_of(server, timeout=2)
    server.process.send_signal(signal.SIGSTOP)  # it keeps its socket but answers nothing
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="no answer within the timeout"):
        await events_of(models.engine("smollm2"), Request(HELLO, greedy(8), affinity="c1"))
    assert 2 <= time.monotonic() - started < 10
