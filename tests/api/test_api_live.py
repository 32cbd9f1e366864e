"""The OpenAI-compatible API end to end: the real `openai` client against a real daphne.

The server is the session's, on the tiny model: the client and the server are
the point here, not the model. Its greedy replies run to max_tokens and are
the same for the same request, which the tests use instead of known words.
"""

from __future__ import annotations

import re
import subprocess
import sys

import openai
import pytest
import requests

from tests import clients
from tests.clients import sign_up
from tests.live_server import REPO, tiny_model

pytestmark = pytest.mark.e2e

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
# Long enough (max_tokens 2000 on the tiny model) to still be running when a test acts.
LONG = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
END_TIMEOUT = 60.0


def api_key(server, username: str) -> str:
    """`manage.py create_api_key` on the server's database; the key is its last line."""
    result = subprocess.run(
        [sys.executable, "manage.py", "create_api_key", username, "--name", "tests"],
        cwd=REPO,
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip().splitlines()[-1]


def served_model(server) -> str:
    """The id of the model the server serves (a request names it: an unknown one is 404)."""
    return requests.get(f"{server.url}/healthz").json()["model"]


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def stored(session, server, completion_id: str) -> dict:
    return clients.stored(session, server.url, completion_id.removeprefix("chatcmpl-"))


def wait_ended(session, server, completion_id: str) -> dict:
    """The stored conversation once its reply has ended (in the server's own time)."""
    return clients.wait_ended(session, server.url, completion_id.removeprefix("chatcmpl-"), END_TIMEOUT)


@pytest.fixture(scope="module")
def user(daphne_server):
    session = sign_up(daphne_server.url, "api-user")
    return session, api_key(daphne_server, "api-user")


def test_the_models_list_and_a_whole_answer(daphne_server, user):
    session, key = user
    api = client(daphne_server, key)
    models = api.models.list().data
    assert [model.id for model in models] == [requests.get(f"{daphne_server.url}/healthz").json()["model"]]

    answer = api.chat.completions.create(model=models[0].id, messages=CAPITAL, temperature=0, max_tokens=24)
    text = answer.choices[0].message.content
    assert text and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 24 and answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens

    conversation = stored(session, daphne_server, answer.id)
    assert conversation["source"] == "api"
    assert [(m["role"], m["status"]) for m in conversation["messages"]] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    reply = conversation["messages"][1]
    assert reply["content"] == text
    assert (reply["prompt_tokens"], reply["completion_tokens"]) == (
        answer.usage.prompt_tokens,
        answer.usage.completion_tokens,
    )


def test_a_streamed_answer_joins_to_the_stored_reply_with_usage(daphne_server, user):
    session, key = user
    api = client(daphne_server, key)
    whole = api.chat.completions.create(
        model=served_model(daphne_server), messages=CAPITAL, temperature=0, max_tokens=24
    )
    stream = api.chat.completions.create(
        model=served_model(daphne_server),
        messages=CAPITAL,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert len([piece for piece in pieces if piece]) > 1  # it really streamed
    text = "".join(pieces)
    assert text == whole.choices[0].message.content  # the same greedy reply, whole or streamed
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    reply = stored(session, daphne_server, chunks[0].id)["messages"][-1]
    assert reply["content"] == text and reply["status"] == "complete"
    assert reply["completion_tokens"] == chunks[-1].usage.completion_tokens


def test_a_stop_string_and_a_bad_parameter(daphne_server, user):
    _, key = user
    api = client(daphne_server, key)
    model = served_model(daphne_server)
    text = api.chat.completions.create(model=model, messages=CAPITAL, temperature=0, max_tokens=24).choices[0]
    text = text.message.content
    stop = text[len(text) // 2 :][:6]  # a piece from the middle of the greedy reply
    answer = api.chat.completions.create(model=model, messages=CAPITAL, temperature=0, max_tokens=24, stop=[stop])
    assert answer.choices[0].message.content == text[: text.index(stop)]
    assert answer.choices[0].finish_reason == "stop"

    with pytest.raises(openai.BadRequestError) as refused:
        api.chat.completions.create(model=model, messages=CAPITAL, n=2)
    assert refused.value.status_code == 400 and refused.value.body["param"] == "n"


def test_a_wrong_or_revoked_key_is_401(daphne_server, user):
    session, key = user
    with pytest.raises(openai.AuthenticationError):
        client(daphne_server, key[:-2] + "xx").models.list()

    other = sign_up(daphne_server.url, "api-revoker")
    revoked = api_key(daphne_server, "api-revoker")
    client(daphne_server, revoked).models.list()  # works before
    page = other.get(f"{daphne_server.url}/settings/keys/").text
    key_id = re.search(r'id="key-(\d+)"', page).group(1)
    response = other.post(
        f"{daphne_server.url}/settings/keys/{key_id}/revoke/",
        data={"csrfmiddlewaretoken": other.cookies["csrftoken"]},
        headers={"Referer": f"{daphne_server.url}/settings/keys/"},
    )
    assert response.status_code == 200  # redirected back to the list
    with pytest.raises(openai.AuthenticationError) as refused:
        client(daphne_server, revoked).chat.completions.create(model=served_model(daphne_server), messages=CAPITAL)
    assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
    client(daphne_server, key).models.list()  # the other user's key is untouched


def test_a_full_queue_is_429_and_a_client_that_leaves_stops_its_reply(daphne_factory, tiny_model_dir):
    # One row and no queue: a second request while one runs is refused.
    server = daphne_factory(
        {"CHAT_MAX_BATCH": 1, "CHAT_MAX_QUEUE": 0, "CHAT_SAVE_INTERVAL_MS": 0, **tiny_model(tiny_model_dir)}
    )
    session = sign_up(server.url, "holder")
    api = client(server, api_key(server, "holder"))
    model = served_model(server)

    held = api.chat.completions.create(model=model, messages=LONG, temperature=0, max_tokens=2000, stream=True)
    first = next(chunk for chunk in held if chunk.choices and chunk.choices[0].delta.content)
    with pytest.raises(openai.RateLimitError) as refused:
        api.chat.completions.create(model=model, messages=CAPITAL, max_tokens=4)
    assert refused.value.status_code == 429 and refused.value.body["code"] == "busy"

    held.close()  # the client disconnects mid-stream
    conversation = wait_ended(session, server, first.id)
    reply = conversation["messages"][-1]
    assert reply["status"] == "cancelled" and reply["finish_reason"] == "cancelled"
    assert 0 < reply["completion_tokens"] < 2000
    # The engine's only row is free again: the next request is served, not refused.
    answer = api.chat.completions.create(model=model, messages=CAPITAL, temperature=0, max_tokens=24)
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "length"
    assert re.search(r"request \d+ cancelled", server.log())
