"""Bad input to the OpenAI-compatible API: a clear 4xx in OpenAI's shape, never a 500 or an HTML page.

Issue 29, items 4 (500s from malformed bodies), 11 (errors not in OpenAI's
shape) and 14 (what the socket refuses, the API must refuse too).
"""

import asyncio
import json

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core.asgi import get_asgi_application
from django.test import AsyncClient

from conversations.api import keys as apikeys
from conversations.api import openai_format as openai_api
from conversations.api.openai_format import BadRequest
from conversations.models import Conversation, Message

USER_ASKS = [{"role": "user", "content": "Hello there"}]


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"messages": [{"role": ["user"], "content": "Hi"}]}, "messages[0].role"),
        ({"messages": [{"role": {"r": "user"}, "content": "Hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "a\ud800b"}]}, "messages[0].content"),
        ({"messages": [{"role": "system", "content": "\udfff"}] + USER_ASKS}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "nul\x00"}]}, "messages[0].content"),
        ({"response_format": "json"}, "response_format"),
        ({"response_format": ["text"]}, "response_format"),
        # Item 14: what the socket refuses.
        ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "  \n"}]}, "messages[0].content"),
        ({"n": True}, "n"),
        ({"stream": 1}, "stream"),
        ({"stream": 0}, "stream"),
        ({"logprobs": 0}, "logprobs"),
    ],
)
def test_malformed_fields_are_refused_by_name(fields, param):
    with pytest.raises(BadRequest) as refused:
        openai_api.parse({"messages": USER_ASKS} | fields)
    assert refused.value.param == param


def test_neutral_values_still_pass():
    call = openai_api.parse({"messages": USER_ASKS, "n": 1, "presence_penalty": 0.0, "logprobs": False})
    assert call.prompt == "Hello there"


@pytest.fixture
def key(alice):
    return apikeys.create(alice, "tests")[1]


async def post_raw(key: str, body: bytes, **extra):
    return await AsyncClient().post(
        "/v1/chat/completions", body, content_type="application/json", headers={"Authorization": f"Bearer {key}"}
    )


def openai_error(response) -> dict:
    assert response["Content-Type"] == "application/json", response.content[:200]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_json_nested_too_deep_is_a_400(key):
    response = await post_raw(key, b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code == 400
    assert openai_error(response)["type"] == "invalid_request_error"
    assert not await Conversation.objects.aexists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_body_over_the_memory_limit_is_a_413_in_openai_shape(key, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 2000}]}).encode()
    response = await post_raw(key, body)
    assert response.status_code == 413
    assert openai_error(response)["code"] == "request_too_large"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_an_unknown_url_under_v1_is_a_404_in_openai_shape(key):
    for path in ("/v1/chat/completions/", "/v1/embeddings", "/v1/"):
        response = await AsyncClient().post(path, b"{}", content_type="application/json")
        assert response.status_code == 404
        assert openai_error(response)["code"] == "unknown_url"


def served_application():
    """Django as daphne serves it (chatsite.asgi, without loading a model)."""
    from chatsite.middleware import http_application

    return http_application(get_asgi_application())


def post_scope(path: str, headers: list, query_string: bytes = b"") -> dict:
    """The ASGI scope of a POST to `path` on 127.0.0.1, as daphne builds it."""
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": query_string,
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
    }


async def asgi_request(application, path: str, body: bytes, headers: list, query_string: bytes = b"") -> tuple:
    communicator = ApplicationCommunicator(application, post_scope(path, headers, query_string))
    await communicator.send_input({"type": "http.request", "body": body})
    start = await communicator.receive_output(5)
    body_parts = []
    while True:
        message = await communicator.receive_output(5)
        body_parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await communicator.wait(5)
    return start["status"], dict(start["headers"]), b"".join(body_parts)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_what_django_refuses_before_any_view_is_in_openai_shape_too(key):
    """A request Django cannot even build (here a query string that is not UTF-8) got an empty HTML 400."""
    application = served_application()
    auth = (b"authorization", f"Bearer {key}".encode())
    status, headers, body = await asgi_request(
        application,
        "/v1/chat/completions",
        b"--x\r\nbroken",
        [auth, (b"content-type", b"multipart/form-data; boundary=x")],
        query_string=b"a=\xff",
    )
    assert status == 400 and headers[b"content-type"] == b"application/json"
    # An answer of the API's own views passes as it is (Django names the header "Content-Type").
    status, headers, body = await asgi_request(
        application, "/v1/chat/completions", b"{}", [(b"content-type", b"application/json")]
    )
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_body_declared_too_large_is_refused_before_it_is_read(key):
    """Issue 29, item 13: the declared length decides; Django never reads (or buffers) the body.

    Only the first chunk is sent and more is announced: an application that
    read the body would wait for the rest, and this request would time out.
    """
    application = served_application()
    length = (b"content-length", str(65 * 1024 * 1024).encode())
    scope_headers = [length, (b"content-type", b"multipart/form-data; boundary=x"), (b"accept", b"application/json")]
    communicator = ApplicationCommunicator(application, post_scope("/c/import/", scope_headers))
    await communicator.send_input({"type": "http.request", "body": b"--x\r\n", "more_body": True})
    start = await communicator.receive_output(5)
    body = await communicator.receive_output(5)
    assert start["status"] == 413
    assert "larger than" in json.loads(body["body"])["error"]
    await communicator.wait(5)


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_refused_calls_store_nothing_even_when_they_race(engine, key, alice, settings):
    """Issue 29, item 6: in a 10-way race, 9 calls got 429 and 6 conversations were stored for 1 served."""
    body = {"messages": USER_ASKS, "temperature": 0, "max_tokens": 8}
    settings.CHAT_USER_DAILY_TOKENS = engine.count_tokens(USER_ASKS) + 8  # one call takes the whole day
    responses = await asyncio.gather(*(post_raw(key, json.dumps(body).encode()) for _ in range(10)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [429] * 9
    assert all(openai_error(r)["code"] == "rate_limited" for r in responses if r.status_code == 429)
    assert await Conversation.objects.acount() == 1
    assert await Message.objects.filter(role="assistant").acount() == 1
