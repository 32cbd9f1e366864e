"""The OpenAI-compatible API: GET /v1/models and POST /v1/chat/completions (docs/api.md).

Async views: the event loop never blocks (the ORM runs in threads). A call is
stored as a `source=api` conversation of the key's owner, its reply is an
ordinary turn (conversations.live.turns) on the same runner and batch as web
chats, and a client that goes away stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError, transaction
from django.http import HttpRequest, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from inference import GenerationParams

from .. import assistants
from ..endpoints import catalog
from ..history import tree
from ..live import process, state, turns
from ..live.frames import follow, raise_lost_cancel
from ..live.replies import DB_BUSY, RESTARTING
from ..models import Assistant, Conversation, Message
from ..review import quotas
from . import keys, openai_format
from .openai_format import BadRequest, Completion

logger = logging.getLogger(__name__)
LOADED_AT = int(time.time())  # a model's `created`: when this process started serving it
ASSISTANT_PREFIX = "assistant:"  # `"model": "assistant:<id>"` starts from that assistant

# How each way a turn can fail reaches the client: (status, type).
FAILURES = {
    "busy": (429, "rate_limit_exceeded"),
    "rate_limited": (429, "rate_limit_exceeded"),
    "invalid": (400, "invalid_request_error"),
    "generation_failed": (503, "server_error"),
    "unavailable": (503, "server_error"),
    "model_unavailable": (503, "server_error"),
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = openai_format.error(message, type_, code, param)

    def response(self) -> JsonResponse:
        return JsonResponse(self.body, status=self.status)


def _failure(code: str, message: str) -> ApiError:
    status, type_ = FAILURES.get(code, (503, "server_error"))
    return ApiError(status, message, type_, code)


@database_sync_to_async
def _authenticate(request):
    """The key's owner; ApiError 401 otherwise (the same answer whether or not the user exists)."""
    header = request.headers.get("Authorization", "")
    scheme, _, raw = header.partition(" ")
    key = keys.authenticate(raw.strip()) if scheme.lower() == "bearer" else None
    if key is None:
        raise ApiError(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
    return key.user


@database_sync_to_async
def _listed_models(user) -> list[dict]:
    """The models the key's owner may use; ApiError 503 while none of them is ready."""
    listed = catalog.models_for(user, state.current().models)["models"]
    if not any(model["available"] for model in listed):
        raise _not_ready()
    return listed


@database_sync_to_async
def _assistant(user, wanted: object) -> Assistant | None:
    """The assistant `"model": "assistant:<id>"` names (None for any other model); ApiError 404 for one
    this user may not use."""
    if not isinstance(wanted, str) or not wanted.startswith(ASSISTANT_PREFIX):
        return None
    assistant = assistants.usable(user, wanted.removeprefix(ASSISTANT_PREFIX))
    if assistant is None:
        message = f"There is no assistant {wanted!r} you may use."
        raise ApiError(404, message, "invalid_request_error", "model_not_found", "model")
    return assistant


@database_sync_to_async
def _model(user, wanted: object) -> str:
    """The call's model: `wanted`, else the default. ApiError 404 for a model the user may not use,
    503 while the local model is not ready (loading, no worker). An endpoint's model that is down is
    tried by the turn itself, which fails with model_unavailable (503)."""
    if wanted is not None and not isinstance(wanted, str):
        raise ApiError(400, "model must be a string.", "invalid_request_error", "invalid_value", "model")
    models = state.current().models
    try:
        model = catalog.resolve(user, wanted or None, models)
    except catalog.UnknownModel as exc:
        raise ApiError(404, str(exc), "invalid_request_error", "model_not_found", "model") from None
    if model == models.local_model and not models.available(model):
        raise _not_ready()
    return model


def _not_ready() -> ApiError:
    reason = process.health().get("reason") or "the model is still loading"
    return ApiError(503, f"No model is ready: {reason}.", "server_error", "model_not_ready")


def _api_view(view):
    """Bearer authentication and OpenAI-shaped errors around an async view."""

    async def wrapped(request, *args, **kwargs):
        try:
            user = await _authenticate(request)
            return await view(request, user, *args, **kwargs)
        except ApiError as exc:
            return exc.response()

    return csrf_exempt(wrapped)


@_api_view
async def models(request, user):
    if request.method != "GET":
        return _method_not_allowed()
    listed = await _listed_models(user)
    return JsonResponse(openai_format.models([model["id"] for model in listed], LOADED_AT))


@_api_view
async def chat_completions(request: HttpRequest, user) -> HttpResponseBase:
    if request.method != "POST":
        return _method_not_allowed()
    body = _json_body(request)
    assistant = await _assistant(user, body.get("model") if isinstance(body, dict) else None)
    base = GenerationParams.from_dict(assistant.params) if assistant else None
    try:
        call = openai_format.parse(body, settings.CHAT_MAX_MESSAGE_CHARS, base)
    except BadRequest as exc:
        raise ApiError(400, exc.message, "invalid_request_error", "invalid_value", exc.param) from None
    if assistant is not None:
        call.system_prompt = call.system_prompt or assistant.system_prompt  # the client's own wins
    model = await _model(user, (assistant.model_name or None) if assistant else body.get("model"))
    answer = Answer(call, model, await _store(user, call, model, assistant))
    # Joined before the turn starts, so no frame is missed; a stream takes it over.
    stack = AsyncExitStack()
    follower = await stack.enter_async_context(follow(answer.conversation_id))
    handed_over = False  # to the stream's generator, which stops the reply and closes the stack itself
    try:
        try:
            kind = "continue" if call.continued else "send"
            turn = await turns.start(answer.conversation_id, kind, call.params, call.prompt, model=model)
            raise_lost_cancel()  # a client that left during the hand-over stops its reply now
            frames = follower.until_end(turn.message_id)
            head = await _head(frames)
        except turns.Refused as exc:
            await _discard(answer.conversation_id)
            raise _failure("unavailable" if exc.message == RESTARTING else exc.code, exc.message) from None
        except ApiError:
            await _discard(answer.conversation_id)  # refused before any text: the call served nothing
            raise
        if call.stream:
            response = answer.stream(head, frames, stack)
            handed_over = True
            return response
        return JsonResponse(await answer.complete(head, frames))
    except BaseException:
        # A failure, or the client went away (the view is cancelled): the reply stops.
        if not handed_over:
            await asyncio.shield(turns.stop(answer.conversation_id))
        raise
    finally:
        if not handed_over:
            await stack.aclose()


def _json_body(request: HttpRequest) -> Any:
    """The request's JSON; ApiError 413 past DATA_UPLOAD_MAX_MEMORY_SIZE, 400 if it is not JSON.

    RecursionError: JSON nested thousands deep is not JSON this API takes.
    """
    try:
        return json.loads(request.body)
    except RequestDataTooBig:
        message = f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        raise ApiError(413, message, "invalid_request_error", "request_too_large") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "The request body is not valid JSON.", "invalid_request_error") from None


@csrf_exempt
def not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """Any other URL under /v1/ (a trailing slash, a typo): 404 in OpenAI's shape, not the site's HTML page."""
    message = f"Unknown request URL: {request.method} {request.path}."
    return JsonResponse(openai_format.error(message, "invalid_request_error", "unknown_url"), status=404)


def _method_not_allowed() -> JsonResponse:
    body = openai_format.error("Method not allowed.", "invalid_request_error", "method_not_allowed")
    return JsonResponse(body, status=405)


@database_sync_to_async
def _store(user, call: Completion, model: str, assistant: Assistant | None = None) -> str:
    """The call's conversation: the client's system prompt and history, ready for the reply's turn."""
    # A spent quota stores nothing; the turn itself then holds its tokens atomically (turns.start).
    try:
        quotas.check(user.id)
    except quotas.QuotaExceeded as exc:
        raise _failure("rate_limited", exc.message) from None
    try:
        with transaction.atomic():
            conversation = Conversation(
                user=user,
                source=Conversation.Source.API,
                system_prompt=call.system_prompt,
                model_name=model,
                assistant=assistant,
            )
            conversation.set_params(call.params.to_dict())
            first_user = next((m["content"] for m in call.history if m["role"] == "user"), call.prompt)
            conversation.title = conversation.title_from(first_user)
            conversation.save()
            Message.objects.bulk_create(
                Message(conversation=conversation, role=m["role"], content=m["content"]) for m in call.history
            )
            tree.chain(conversation)
    except DatabaseError as exc:
        logger.warning("cannot store an API call: %s", exc)
        raise _failure("busy", DB_BUSY) from None
    return str(conversation.id)


async def _discard(conversation_id: str) -> None:
    """A call that was refused keeps nothing: its conversation goes (through the turn owner, like any delete)."""
    try:
        await turns.delete(conversation_id)
    except (turns.Refused, DatabaseError) as exc:
        logger.warning("cannot discard the refused API call %s: %s", conversation_id, exc)


async def _head(frames: AsyncIterator[dict]) -> list[dict]:
    """Frames up to the first sign the reply is running (a token or a queue place), or its end.

    Raises ApiError when the reply failed before any text, while the status
    code can still say why (429 for a full queue).
    """
    seen: list[dict] = []
    async for frame in frames:
        seen.append(frame)
        if frame["type"] in ("token", "queued"):
            break
        if frame["type"] == "end":
            _raise_if_failed(seen)
            break
    return seen


def _raise_if_failed(seen: list[dict]) -> None:
    """ApiError for a reply that ended otherwise than complete (the last frame is its `end`)."""
    if seen[-1]["status"] == Message.Status.COMPLETE:
        return
    errors = [frame for frame in seen if frame["type"] == "error"]
    if errors:
        raise _failure(errors[-1]["code"], errors[-1]["message"])
    raise _failure("generation_failed", f"The reply ended as {seen[-1]['status']}.")


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


class Answer:
    """The answer to one call, whole or as server-sent events."""

    def __init__(self, call: Completion, model: str, conversation_id: str) -> None:
        self.call = call
        self.model = model
        self.conversation_id = conversation_id
        self.id = f"chatcmpl-{conversation_id}"

    async def complete(self, head: list[dict], frames: AsyncIterator[dict]) -> dict:
        seen = head if head[-1]["type"] == "end" else head + [frame async for frame in frames]
        _raise_if_failed(seen)
        text = "".join(frame["text"] for frame in seen if frame["type"] == "token")
        return openai_format.completion(self.id, self.model, text, seen[-1])

    def stream(self, head: list[dict], frames: AsyncIterator[dict], stack: AsyncExitStack) -> StreamingHttpResponse:
        response = StreamingHttpResponse(self._events(head, frames, stack), content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # proxies must not hold the events back
        return response

    async def _events(self, head: list[dict], frames: AsyncIterator[dict], stack: AsyncExitStack) -> AsyncIterator[str]:
        seen: list[dict] = []
        try:
            yield _sse(openai_format.chunk(self.id, self.model, {"role": "assistant", "content": ""}))
            for frame in head:
                seen.append(frame)
                if frame["type"] == "token":
                    yield _sse(openai_format.chunk(self.id, self.model, {"content": frame["text"]}))
            if seen[-1]["type"] != "end":
                async for frame in frames:
                    seen.append(frame)
                    if frame["type"] == "token":
                        yield _sse(openai_format.chunk(self.id, self.model, {"content": frame["text"]}))
            yield self._last_events(seen)
        finally:
            # Disconnected before the end (the task is cancelled here): the reply stops.
            if not seen or seen[-1]["type"] != "end":
                await asyncio.shield(turns.stop(self.conversation_id))
            await stack.aclose()

    def _last_events(self, seen: list[dict]) -> str:
        end = seen[-1]
        try:
            _raise_if_failed(seen)
        except ApiError as exc:
            return _sse(exc.body) + "data: [DONE]\n\n"
        events = _sse(openai_format.chunk(self.id, self.model, {}, openai_format.finish_reason(end)))
        if self.call.include_usage:
            events += _sse(openai_format.usage_chunk(self.id, self.model, end))
        return events + "data: [DONE]\n\n"
