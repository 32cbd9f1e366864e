"""The OpenAI-compatible API in process: the tiny engine, a real database, Django's async client.

The real `openai` client against a real daphne is tests/api/test_api_live.py.
"""

import asyncio
import json
import sys

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from conversations.api import keys as apikeys
from conversations.api import openai_format as openai_api
from conversations.api.openai_format import BadRequest
from conversations.live import process, state
from conversations.live.frames import raise_lost_cancel
from conversations.models import Conversation, Message
from inference import GenerationParams, Request

USER_ASKS = [{"role": "user", "content": "Hello there"}]


def bearer(raw: str) -> dict:
    return {"Authorization": f"Bearer {raw}"}


async def post(raw: str, body: dict):
    return await AsyncClient().post(
        "/v1/chat/completions", json.dumps(body), content_type="application/json", headers=bearer(raw)
    )


@pytest.fixture
def key(alice):
    return apikeys.create(alice, "tests")[1]


# -- parsing (no database) ---------------------------------------------------------


def test_a_request_becomes_a_system_prompt_a_history_and_a_prompt():
    call = openai_api.parse(
        {
            "model": "whatever",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "developer", "content": "No emoji."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Capital of "}, {"type": "text", "text": "France?"}],
                },
            ],
            "temperature": 0,
            "top_p": 0.5,
            "repetition_penalty": 1.2,
            "max_tokens": 12,
            "stop": "\n",
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "ignored",
            "seed": 3,
            "n": 1,
        }
    )
    assert call.system_prompt == "Be brief.\n\nNo emoji."
    assert call.history == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert call.prompt == "Capital of France?"
    assert (call.params.temperature, call.params.top_p, call.params.max_new_tokens) == (0, 0.5, 12)
    assert call.params.stop == ("\n",) and call.params.repetition_penalty == 1.2
    assert call.stream and call.include_usage


def test_a_message_longer_than_the_chat_allows_is_refused():
    with pytest.raises(BadRequest) as refused:
        openai_api.parse({"messages": [{"role": "system", "content": "x" * 11}] + USER_ASKS}, max_chars=10)
    assert refused.value.param == "messages[0].content"
    assert openai_api.parse({"messages": USER_ASKS}, max_chars=11).prompt == "Hello there"


def test_max_completion_tokens_wins_over_max_tokens():
    call = openai_api.parse({"messages": USER_ASKS, "max_tokens": 5, "max_completion_tokens": 7})
    assert call.params.max_new_tokens == 7


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"n": 2}, "n"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"repetition_penalty": 0.5}, "repetition_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": 10**6}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "assistant", "content": "Hi"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content",
        ),
    ],
)
def test_a_field_that_would_change_the_answer_is_refused_by_name(fields, param):
    with pytest.raises(BadRequest) as refused:
        openai_api.parse({"messages": USER_ASKS} | fields)
    assert refused.value.param == param


# -- the views ---------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
@pytest.mark.parametrize("header", [None, "Bearer cs-not-a-key-at-all-000000000000000000000", "Basic abc", "Bearer "])
async def test_no_valid_key_is_401_in_openai_shape(header, alice):
    headers = {"Authorization": header} if header else {}
    for response in (
        await AsyncClient().get("/v1/models", headers=headers),
        await AsyncClient().post("/v1/chat/completions", "{}", content_type="application/json", headers=headers),
    ):
        assert response.status_code == 401
        assert response.json()["error"] == {
            "message": "Incorrect API key provided.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_model_list_names_the_served_model(engine, key):
    response = await AsyncClient().get("/v1/models", headers=bearer(key))
    assert response.status_code == 200
    assert response.json()["data"][0] | {"created": 0} == {
        "id": "tiny-llama",
        "object": "model",
        "owned_by": "chatsite",
        "created": 0,
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_no_model_ready_is_503(key):
    with state.swapped(process.build(load_engine=False)):  # the model is still loading
        response = await AsyncClient().get("/v1/models", headers=bearer(key))
        posted = await post(key, {"messages": USER_ASKS})
    assert response.status_code == posted.status_code == 503
    assert response.json()["error"]["code"] == "model_not_ready"
    assert not await Conversation.objects.aexists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_bad_parameter_is_400_naming_it_and_stores_nothing(engine, key):
    response = await post(key, {"messages": USER_ASKS, "n": 3})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n" and response.json()["error"]["type"] == "invalid_request_error"
    bad_json = await AsyncClient().post(
        "/v1/chat/completions", "{not json", content_type="application/json", headers=bearer(key)
    )
    assert bad_json.status_code == 400
    assert not await Conversation.objects.aexists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_call_is_stored_as_an_api_conversation_of_the_keys_owner(engine, key, alice):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me more"},
    ]
    response = await post(key, {"messages": messages, "temperature": 0, "max_tokens": 10})
    assert response.status_code == 200, response.content
    answer = response.json()
    conversation = await Conversation.objects.aget()
    assert answer["id"] == f"chatcmpl-{conversation.id}" and answer["object"] == "chat.completion"
    assert conversation.source == "api" and conversation.user_id == alice.id
    assert conversation.system_prompt == "Be brief." and conversation.title == "Hi"
    stored = [m async for m in Message.objects.filter(conversation=conversation)]
    assert [(m.role, m.content) for m in stored[:3]] == [
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "Tell me more"),
    ]
    reply = stored[3]
    assert reply.status == "complete" and reply.content == answer["choices"][0]["message"]["content"] != ""
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": 10,
        "total_tokens": reply.prompt_tokens + 10,
    }


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_stream_joins_to_the_stored_reply_and_ends_with_usage_and_done(engine, key):
    body = {"messages": USER_ASKS, "temperature": 0, "max_tokens": 12, "stream": True}
    response = await post(key, body | {"stream_options": {"include_usage": True}})
    assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
    raw = "".join([part.decode() async for part in response.streaming_content])
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    reply = await Message.objects.aget(role="assistant")
    assert reply.content == text != "" and reply.status == "complete"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_stop_string_cuts_the_answer(engine, key):
    free = (await post(key, {"messages": USER_ASKS, "temperature": 0, "max_tokens": 30})).json()
    text = free["choices"][0]["message"]["content"]
    stop = text[6:9]
    cut = (await post(key, {"messages": USER_ASKS, "temperature": 0, "max_tokens": 30, "stop": stop})).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_api_conversations_stay_their_owners(engine, key, bob):
    await post(key, {"messages": USER_ASKS, "max_tokens": 4})
    conversation = await Conversation.objects.aget()
    client = AsyncClient()
    await sync_to_async(client.force_login)(bob)
    assert (await client.get(f"/api/conversations/{conversation.id}/")).status_code == 404
    listed = (await client.get("/api/conversations/")).json()
    assert str(conversation.id) not in json.dumps(listed)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_continue_final_message_goes_on_with_the_last_reply(engine, key):
    """vLLM's extension, which Chatsite sends an endpoint for a Continue: the answer is the new text only."""
    messages = [{"role": "user", "content": "Tell me a story"}, {"role": "assistant", "content": "Once upon"}]
    body = {"messages": messages, "temperature": 0, "max_tokens": 6}
    response = await post(key, body | {"continue_final_message": True, "add_generation_prompt": False})
    assert response.status_code == 200, response.content
    text = response.json()["choices"][0]["message"]["content"]
    reply = await Message.objects.aget(role="assistant")
    assert reply.content == "Once upon" + text and text and reply.completion_tokens == 6
    prompt = engine.prepare(Request(messages=messages[:1], params=GenerationParams(), prefill="Once upon")).ids
    assert reply.prompt_tokens == len(prompt)
    for bad in ({"continue_final_message": True, "add_generation_prompt": True}, {"continue_final_message": 1}):
        refused = await post(key, body | bad)
        assert refused.status_code == 400, bad
    no_reply = await post(key, body | {"messages": messages[:1], "continue_final_message": True})
    assert no_reply.status_code == 400 and no_reply.json()["error"]["param"] == "messages"


@pytest.mark.asyncio
async def test_a_cancel_that_wait_for_dropped_is_raised_after_the_hand_over():
    """redis-py writes each command through asyncio.wait_for. On Python 3.11 a cancel that comes as the write
    completes is dropped: an API client that left as its reply was handed to the workers went unnoticed for
    10 s (tests/live/test_worker_stop.py, 12 runs in 156 of a loop). The view raises it once the turn has started."""
    written = asyncio.get_running_loop().create_future()
    reached = []

    async def hand_over():
        reached.append(await asyncio.wait_for(written, timeout=5))  # as redis-py writes a command
        raise_lost_cancel()
        reached.append("went on")

    task = asyncio.create_task(hand_over())
    await asyncio.sleep(0)  # it waits in wait_for
    written.set_result("OK")
    task.cancel()  # the client leaves as the write completes
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "went on" not in reached
    if sys.version_info < (3, 12):
        assert reached == ["OK"]  # wait_for returned the write's result and dropped the cancel
