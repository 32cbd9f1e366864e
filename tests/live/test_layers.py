"""The Redis channel layer (chatsite.layers) on a real Redis: a consumer going away loses nothing of another's."""

import asyncio
import uuid

import pytest
import redis.asyncio as redis

from chatsite.layers import RedisChannelLayer
from chatsite.settings import channel_layers
from tests.live.test_worker import redis_url  # noqa: F401  (the session's Redis)

pytestmark = [pytest.mark.redis, pytest.mark.asyncio]


@pytest.fixture
def layer(redis_url):  # noqa: F811
    config = channel_layers(redis_url)["default"]["CONFIG"] | {"prefix": f"test-{uuid.uuid4().hex[:8]}"}
    return RedisChannelLayer(**config)


async def blocked_in_bzpopmin(url: str) -> None:
    """Until a client of this Redis is blocked in BZPOPMIN (the layer reading the shared key)."""
    async with redis.from_url(url) as client:
        while not any(c["cmd"] == "bzpopmin" and "b" in c["flags"] for c in await client.client_list()):
            await asyncio.sleep(0.01)


async def test_a_cancelled_receive_loses_no_message_of_another_channel(layer, redis_url):  # noqa: F811
    leaving, staying = await layer.new_channel(), await layer.new_channel()
    # Both wait: one of them is blocked in BZPOPMIN on the process's shared key.
    left = asyncio.ensure_future(layer.receive(leaving))
    stays = asyncio.ensure_future(layer.receive(staying))
    await blocked_in_bzpopmin(redis_url)
    left.cancel()
    await layer.send(staying, {"type": "chat.end", "n": 1})
    assert await asyncio.wait_for(stays, 10) == {"type": "chat.end", "n": 1}
    # And the channel goes on receiving, in order.
    for n in (2, 3):
        await layer.send(staying, {"type": "chat.token", "n": n})
    assert [(await layer.receive(staying))["n"] for _ in range(2)] == [2, 3]
    await layer.flush()


async def test_group_messages_reach_every_channel_of_the_process_once(layer):
    channels = [await layer.new_channel() for _ in range(3)]
    for channel in channels:
        await layer.group_add("chat.x", channel)
    await layer.group_send("chat.x", {"type": "chat.token", "text": "hi"})
    received = await asyncio.gather(*(asyncio.wait_for(layer.receive(c), 10) for c in channels))
    assert received == [{"type": "chat.token", "text": "hi"}] * 3
    await layer.flush()
