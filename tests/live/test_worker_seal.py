"""A reply ended in its worker's stead (a reaper, after a lease lapsed while the worker was only slow) is
sealed first: the worker records and publishes nothing more of it, so every socket was sent exactly the
stored text. The cause of `make soak`'s rare "1 reply differed" (issue 29, item 7): a token published
after the reaper read the stream and before its `end` went out."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from conversations.live import leases
from conversations.live.generation import Sealed
from conversations.live.leases import Leases
from conversations.models import Message
from tests.live.test_consumer import connect, joined_tokens, receive_until_end, send_long
from tests.live.test_worker import chat, redis_url, start_worker, worker_mode  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.redis, pytest.mark.django_db(transaction=True)]


@pytest.mark.asyncio
async def test_a_sealed_stream_takes_no_more_text(worker_mode, chat):  # noqa: F811
    reply = await sync_to_async(chat.append)("assistant", status="streaming")
    leases = Leases()
    record = leases.record(reply.id)
    await record.open()
    await record.append("Hello")
    assert await leases.seal(reply.id) == (True, "Hello")
    with pytest.raises(Sealed):
        await record.append(" world")
    assert await leases.read_stream(reply.id) == (True, "Hello")


@pytest.mark.asyncio
async def test_a_reply_reaped_while_its_worker_still_writes_ends_with_what_the_sockets_got(
    start_worker,  # noqa: F811
    chat,  # noqa: F811
    alice,
):
    server, _ = await start_worker()
    ws, connected, _ = await connect(chat.id, alice)
    assert connected
    for _ in range(3):  # the race is narrow; each round gives it a chance
        frames = await send_long(ws, "Tell me a long story")
        message_id = next(f["message_id"] for f in frames if f["type"] == "start")
        # The lease lapsed (the worker was slow, not dead): a reaper ends the reply while tokens still flow.
        assert await Leases().reap_one(str(chat.id), message_id)
        frames += await receive_until_end(ws)
        stored = await Message.objects.aget(id=message_id)
        assert stored.status == "interrupted"
        assert joined_tokens(frames) == stored.content  # not a token more, not a token less
        while message_id in server.held:  # the worker gives the reply up at its next chunk
            server.changed.clear()
            await asyncio.wait_for(server.changed.wait(), 30)
    await ws.disconnect()


@pytest.mark.asyncio
async def test_a_worker_that_meets_the_seal_leaves_the_end_to_whoever_sealed(
    start_worker,  # noqa: F811
    chat,  # noqa: F811
    alice,
    monkeypatch,
):
    """The reaper seals, then stores the end. A worker that met the seal in between used to store an end of
    its own ("error"), and the reaper's then lost (a loaded CI run failed the test above on it)."""
    server, _ = await start_worker()
    ws, connected, _ = await connect(chat.id, alice)
    assert connected
    frames = await send_long(ws, "Tell me a long story")
    message_id = next(f["message_id"] for f in frames if f["type"] == "start")
    store_end = leases.finish

    async def slow_to_store(*args):
        # The reaper is slow to store the end: the worker meets the seal first, and gives the reply up.
        while message_id in server.held:
            server.changed.clear()
            await asyncio.wait_for(server.changed.wait(), 30)
        return await store_end(*args)

    monkeypatch.setattr(leases, "finish", slow_to_store)
    assert await Leases().reap_one(str(chat.id), message_id)
    frames += await receive_until_end(ws)
    stored = await Message.objects.aget(id=message_id)
    assert stored.status == "interrupted" and stored.content == joined_tokens(frames)
    await ws.disconnect()
