"""Daily token quotas (conversations.review.quotas) on the three paths: the WebSocket, the API and batch_prompts.

A real database (also in the PostgreSQL pass), the tiny engine, real turns.
"""

import asyncio
import threading
from datetime import date

import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from conversations.api import keys as apikeys
from conversations.live import state, turns
from conversations.live.frames import follow
from conversations.models import Conversation, DailyUsage, Message, QuotaOverride, Reservation
from conversations.review import quotas
from inference import GenerationParams
from tests.api.test_api import post
from tests.live.test_consumer import connect
from tests.test_batch_prompts import records, run, write

GREEDY = GenerationParams.from_dict({"temperature": 0, "max_new_tokens": 12})
HI_BOUND = quotas.prompt_bound([{"role": "user", "content": "Hi"}]) + 12  # what a turn "Hi" holds


async def run_turn(conversation_id, text="Hi", params=GREEDY) -> list[dict]:
    async with follow(conversation_id) as following:
        turn = await turns.start(conversation_id, "send", params, text)
        return [frame async for frame in following.until_end(turn.message_id)]


def usage_of(user) -> DailyUsage:
    return DailyUsage.objects.get(user=user, day=quotas.today())


# -- the turn: reserve, settle -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_turn_holds_its_bound_then_settles_what_it_spent(engine, alice, conversation):
    chat = await sync_to_async(conversation)(alice)
    frames = await run_turn(chat.id)
    usage = await sync_to_async(usage_of)(alice)
    end = frames[-1]
    spent = end["usage"]["prompt_tokens"] + end["usage"]["completion_tokens"]
    assert (usage.tokens, usage.reserved, usage.replies) == (spent, 0, 1)
    assert spent <= HI_BOUND  # the hold was an upper bound of the cost
    assert not await Reservation.objects.aexists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_over_the_quota_the_socket_answers_rate_limited_and_stores_nothing(engine, alice, conversation, settings):
    settings.CHAT_USER_DAILY_TOKENS = 100
    chat = await sync_to_async(conversation)(alice)
    await DailyUsage.objects.acreate(user=alice, day=quotas.today(), tokens=100)
    ws, connected, _ = await connect(chat.id, alice)
    assert connected
    await ws.send_json_to({"type": "send", "content": "Hello?"})
    frame = await ws.receive_json_from(timeout=30)
    assert frame["type"] == "error" and frame["code"] == "rate_limited"
    assert "100 of your 100 tokens" in frame["message"] and frame["message"].endswith("resets at 00:00 UTC.")
    assert not await Message.objects.filter(conversation=chat).aexists()
    # The socket stays usable: with a bigger budget the next send goes through.
    await QuotaOverride.objects.acreate(user=alice, daily_tokens=10_000)
    await ws.send_json_to({"type": "send", "content": "Hello?", "params": {"max_new_tokens": 4}})
    kinds = []
    while "end" not in kinds:
        kinds.append((await ws.receive_json_from(timeout=30))["type"])
    assert kinds[:2] == ["message", "start"]
    await ws.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_over_the_quota_the_api_answers_429_in_openai_shape_and_stores_nothing(engine, alice, settings):
    settings.CHAT_USER_DAILY_TOKENS = 50
    key = (await sync_to_async(apikeys.create)(alice, "tests"))[1]
    await DailyUsage.objects.acreate(user=alice, day=quotas.today(), tokens=60)
    response = await post(key, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["code"] == "rate_limited" and error["type"] == "rate_limit_exceeded"
    assert "resets at 00:00 UTC" in error["message"]
    assert not await Conversation.objects.aexists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_api_calls_count_against_the_same_quota(engine, alice, settings):
    key = (await sync_to_async(apikeys.create)(alice, "tests"))[1]
    response = await post(key, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0})
    assert response.status_code == 200, response.content
    usage = await sync_to_async(usage_of)(alice)
    assert usage.tokens == response.json()["usage"]["total_tokens"] and usage.reserved == 0


@pytest.mark.django_db(transaction=True)
def test_batch_prompts_refuses_a_spent_quota_naming_the_user(engine, tmp_path, alice, settings):
    settings.CHAT_USER_DAILY_TOKENS = 10
    DailyUsage.objects.create(user=alice, day=quotas.today(), tokens=10)
    out, err, error = run(write(tmp_path, "p.txt", ["Hello"]), user="alice")
    assert error is not None and "user 'alice' has used 10 of their 10 tokens" in str(error)
    assert "00:00 UTC" in str(error) and out == ""
    assert not Conversation.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_batch_prompts_stops_when_the_quota_runs_out_and_counts_what_ran(engine, tmp_path, alice, settings):
    # The budget admits the first prompt only: its hold (prompt + 4 new tokens) leaves nothing for the next.
    prompt_tokens = engine.count_tokens([{"role": "user", "content": "Hello"}])
    settings.CHAT_USER_DAILY_TOKENS = prompt_tokens + 1
    out, err, error = run(write(tmp_path, "p.txt", ["Hello", "Hello", "Hello"]), user="alice", temperature=0)
    assert error is not None and "stopped after 1 of 3 prompts" in str(error) and "'alice'" in str(error)
    [row] = records(out)
    usage = usage_of(alice)
    assert usage.tokens == row["prompt_tokens"] + row["completion_tokens"] and usage.reserved == 0
    assert Conversation.objects.filter(user=alice).count() == 1


@pytest.mark.django_db(transaction=True)
def test_batch_prompts_usage_is_counted_without_a_limit(engine, tmp_path, alice):
    out, err, error = run(write(tmp_path, "p.txt", ["Hello", "Why?"]), user="alice", temperature=0)
    assert error is None, err
    spent = sum(r["prompt_tokens"] + r["completion_tokens"] for r in records(out))
    usage = usage_of(alice)
    assert (usage.tokens, usage.reserved, usage.replies) == (spent, 0, 2)


# -- simultaneous turns --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_simultaneous_turns_cannot_overspend(engine, alice, conversation, settings):
    long = GenerationParams.from_dict({"temperature": 0, "max_new_tokens": 900})  # still running when checked
    hold = engine.count_tokens([{"role": "user", "content": "Hi"}]) + 900
    settings.CHAT_USER_DAILY_TOKENS = hold  # the first hold uses it all
    chats = [await sync_to_async(conversation)(alice) for _ in range(4)]
    results = await asyncio.gather(*(turns.start(c.id, "send", long, "Hi") for c in chats), return_exceptions=True)
    started = [r for r in results if isinstance(r, turns.Turn)]
    refused = [r for r in results if isinstance(r, turns.Refused)]
    assert len(started) == 1 and len(refused) == 3 and {r.code for r in refused} == {"rate_limited"}
    assert (await sync_to_async(usage_of)(alice)).reserved == hold
    assert await Message.objects.acount() == 2  # the refused turns stored nothing
    await turns.stop(started[0].conversation_id)
    await asyncio.wait_for(state.current().runner.get(started[0].conversation_id).task, 60)
    usage = await sync_to_async(usage_of)(alice)
    reply = await Message.objects.aget(id=started[0].message_id)
    assert (usage.reserved, usage.replies) == (0, 1)
    assert usage.tokens == reply.prompt_tokens + reply.completion_tokens <= hold


@pytest.mark.django_db(transaction=True)
def test_holds_taken_at_the_same_moment_from_many_threads_never_pass_the_limit(alice, settings):
    """Real concurrency (one database connection a thread): the conditional UPDATE admits while
    spent + held < limit, so at most one hold crosses the limit.

    PostgreSQL pass only: the SQLite test database is in memory with a shared
    cache, which has no busy timeout for concurrent writers (a file database
    runs one write transaction at a time, BEGIN IMMEDIATE; the test above
    covers SQLite through real turns).
    """
    if connection.vendor == "sqlite":
        pytest.skip("concurrent writers need a server database; see the docstring")
    settings.CHAT_USER_DAILY_TOKENS = 1000
    DailyUsage.objects.create(user=alice, day=quotas.today())
    barrier = threading.Barrier(8)
    admitted, refused = [], []

    def take() -> None:
        try:
            barrier.wait()
            quotas.reserve(alice.id, 0, 300)
            admitted.append(1)
        except quotas.QuotaExceeded:
            refused.append(1)
        finally:
            connection.close()

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(admitted), len(refused)) == (4, 4)  # 300, 300, 300, then the 100 left; then nothing
    assert usage_of(alice).reserved == 1000  # never over


# -- the day, the override -------------------------------------------------------------


@pytest.mark.django_db
def test_yesterdays_use_does_not_count_today_and_a_hold_settles_on_its_own_day(alice, settings, monkeypatch):
    settings.CHAT_USER_DAILY_TOKENS = 100
    monday, tuesday = date(2026, 3, 2), date(2026, 3, 3)
    monkeypatch.setattr(quotas, "today", lambda: monday)
    first = quotas.reserve(alice.id, 0, 90).usage_id
    quotas.check(alice.id)  # 90 of 100: something is left
    second = quotas.reserve(alice.id, 0, 20)  # capped at the 10 left
    assert (second.tokens, second.max_new_tokens) == (10, 10)
    with pytest.raises(quotas.QuotaExceeded):
        quotas.check(alice.id)
    with pytest.raises(quotas.QuotaExceeded):
        quotas.reserve(alice.id, 0, 1)
    monkeypatch.setattr(quotas, "today", lambda: tuesday)
    quotas.check(alice.id)  # a new day, a new budget
    quotas.release(first, 90, 80)  # replies begun on Monday and ended on Tuesday count on Monday
    quotas.release(second.usage_id, 10, 10)
    monday_usage = DailyUsage.objects.get(user=alice, day=monday)
    assert (monday_usage.tokens, monday_usage.reserved, monday_usage.replies) == (90, 0, 2)
    assert quotas.status(alice.id)["used"] == 0
    assert quotas.resets_at().isoformat() == "2026-03-04T00:00:00+00:00"


@pytest.mark.django_db
def test_a_per_user_override_replaces_the_setting(alice, bob, settings):
    settings.CHAT_USER_DAILY_TOKENS = 0  # no limit for anyone...
    QuotaOverride.objects.create(user=alice, daily_tokens=50)  # ...but alice
    DailyUsage.objects.create(user=alice, day=quotas.today(), tokens=50)
    DailyUsage.objects.create(user=bob, day=quotas.today(), tokens=10_000)
    with pytest.raises(quotas.QuotaExceeded):
        quotas.check(alice.id)
    quotas.check(bob.id)
    settings.CHAT_USER_DAILY_TOKENS = 100
    QuotaOverride.objects.filter(user=alice).update(daily_tokens=0)  # 0: no limit for alice
    quotas.check(alice.id)
    with pytest.raises(quotas.QuotaExceeded):
        quotas.check(bob.id)
    assert quotas.status(bob.id) == {
        "used": 10_000,
        "limit": 100,
        "left": 0,
        "resets_at": quotas.resets_at().isoformat(),
    }


@pytest.mark.django_db
def test_a_hold_of_a_reply_that_never_finished_is_released_at_the_next_turn(alice, conversation):
    chat = conversation(alice, messages=[("user", "Hi")])
    reply = Message.objects.create(conversation=chat, role="assistant", status="streaming")
    quotas.reserve(alice.id, 400, 100, reply.id)
    Message.interrupt_streaming()  # a server killed outright, restarted
    quotas.reserve(alice.id, 0, 10)
    usage = usage_of(alice)
    assert (usage.reserved, usage.tokens) == (10, 0) and not Reservation.objects.exists()


# -- a hold never passes the limit (issue 29, item 8) ----------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_hold_is_capped_at_what_is_left_and_so_is_the_reply(engine, alice, conversation, settings):
    """One call asking 4,096 tokens with 3,000 a day once spent 6,656: the hold was not capped."""
    settings.CHAT_USER_DAILY_TOKENS = 3000
    await DailyUsage.objects.acreate(user=alice, day=quotas.today(), tokens=2900)
    chat = await sync_to_async(conversation)(alice)
    asked = GenerationParams.from_dict({"temperature": 0, "max_new_tokens": 4096})
    prompt = engine.count_tokens([{"role": "user", "content": "Hi"}])
    async with follow(chat.id) as following:
        turn = await turns.start(chat.id, "send", asked, "Hi")
        assert turn.params.max_new_tokens == 100 - prompt
        assert (await sync_to_async(usage_of)(alice)).reserved == 100
        frames = [frame async for frame in following.until_end(turn.message_id)]
    usage = await sync_to_async(usage_of)(alice)
    assert frames[-1]["usage"]["completion_tokens"] <= 100 - prompt
    assert usage.tokens <= 3000 and usage.reserved == 0
    chat = await Conversation.objects.aget(id=chat.id)
    assert chat.max_new_tokens == 4096  # the chat keeps the setting its user chose


@pytest.mark.django_db
def test_a_hold_is_refused_when_not_one_token_is_left(alice, settings):
    settings.CHAT_USER_DAILY_TOKENS = 100
    DailyUsage.objects.create(user=alice, day=quotas.today(), tokens=80)
    with pytest.raises(quotas.QuotaExceeded):
        quotas.reserve(alice.id, 20, 50)  # the prompt alone takes the 20 left
    hold = quotas.reserve(alice.id, 19, 50)
    assert (hold.tokens, hold.max_new_tokens) == (20, 1)
