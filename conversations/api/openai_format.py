"""OpenAI's chat-completions format: a request checked into what a turn needs, and the answers' shapes.

No I/O here (conversations.api.views does that), so every rule is tested fast.
A field that would change the answer and cannot be honoured (`n` > 1, tools,
images, penalties, ...) is refused naming it; one that changes nothing here
(`user`, `seed`, `metadata`, ...) is accepted and ignored; any other is refused
as unknown, so a typo does not pass silently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from inference import GenerationParams, InvalidParams

from ..models import unstorable

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
IGNORED = {
    "model",  # the view resolves it (conversations.endpoints.catalog)
    "user",
    "seed",
    "metadata",
    "store",
    "service_tier",
    "parallel_tool_calls",
    "prompt_cache_key",
    "safety_identifier",
    "reasoning_effort",
    "verbosity",
}
# Fields refused unless they hold the value that changes nothing.
NEUTRAL = {
    "n": (None, 1),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
}
HANDLED = {"messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "stream"}
HANDLED |= {"stream_options", "response_format", "repetition_penalty"}  # the last: an extension, as vLLM's
# vLLM's extensions for going on with a final assistant message (Continue, through an endpoint: docs/api.md).
HANDLED |= {"continue_final_message", "add_generation_prompt"}


class BadRequest(Exception):
    """A request OpenAI's API would refuse with 400: `param` names the field."""

    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


@dataclass
class Completion:
    """A checked request: the conversation to store and how to answer."""

    system_prompt: str
    history: list[dict]  # user/assistant messages before the last one (with `continued`: all of them)
    prompt: str  # the last user message: the turn's text ("" with `continued`)
    params: GenerationParams
    stream: bool
    include_usage: bool
    continued: bool = False  # the reply goes on from the last message, an assistant's


def parse(body: object, max_chars: int | None = None, base: GenerationParams | None = None) -> Completion:
    """Check a chat-completions request body; raises BadRequest naming the first bad field.

    `max_chars`: the longest a message may be (CHAT_MAX_MESSAGE_CHARS, as in the web chat).
    `base`: the parameters the body's own override (an assistant's), else the defaults.
    """
    if not isinstance(body, dict):
        raise BadRequest(None, "The request body must be a JSON object.")
    for name in body:
        if name not in HANDLED and name not in IGNORED and name not in NEUTRAL:
            raise BadRequest(name, f"Unrecognized request argument supplied: {name}")
    for name, neutral in NEUTRAL.items():
        if name in body and not _neutral(body[name], neutral):
            raise BadRequest(name, f"{name} is not supported by this server; leave it out.")
    response_format = body.get("response_format") or {}
    if not isinstance(response_format, dict) or response_format.get("type", "text") != "text":
        raise BadRequest("response_format", "Only response_format type 'text' is supported.")
    continued = _continued(body)
    system_prompt, history, prompt = _messages(body.get("messages"), max_chars, continued)
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):  # as the socket: 1 is not true
        raise BadRequest("stream", "stream must be a boolean.")
    params = _params(body, base)
    return Completion(system_prompt, history, prompt, params, bool(stream), _include_usage(body), continued)


def _continued(body: dict) -> bool:
    """vLLM's `continue_final_message` (with `add_generation_prompt` false, if given): go on with the last
    message, an assistant's, rather than answer it."""
    continued = body.get("continue_final_message", False)
    if not isinstance(continued, bool):
        raise BadRequest("continue_final_message", "continue_final_message must be a boolean.")
    header = body.get("add_generation_prompt", not continued)
    if not isinstance(header, bool) or header == continued:
        message = "add_generation_prompt must be the opposite of continue_final_message."
        raise BadRequest("add_generation_prompt", message)
    return continued


def _neutral(value: object, allowed: tuple) -> bool:
    """Whether `value` is one of the values that change nothing; `true` is not `1` here, as in JSON."""
    return any(isinstance(value, bool) == isinstance(v, bool) and value == v for v in allowed)


def _messages(messages: object, max_chars: int | None, continued: bool = False) -> tuple[str, list[dict], str]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "messages must be a non-empty array.")
    system, turns = [], []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(f"{where}.role", "Each message needs a role: system, developer, user or assistant.")
        if message.get("tool_calls") or message.get("function_call"):
            raise BadRequest(f"{where}.tool_calls", "Tool calls are not supported by this server.")
        text = _text(message.get("content"), f"{where}.content")
        if max_chars is not None and len(text) > max_chars:
            raise BadRequest(f"{where}.content", f"A message may be at most {max_chars} characters long.")
        role = ROLES[role]
        if role == "user" and not text.strip():  # as the socket refuses an empty message
            raise BadRequest(f"{where}.content", "A user message needs some text.")
        if role == "system":
            system.append(text)
        else:
            turns.append({"role": role, "content": text})
    if continued:
        if not turns or turns[-1]["role"] != "assistant" or not turns[-1]["content"]:
            raise BadRequest("messages", "With continue_final_message, the last message must be an assistant's.")
        return "\n\n".join(system), turns, ""
    if not turns or turns[-1]["role"] != "user":
        raise BadRequest("messages", "The last message (other than system ones) must be from the user.")
    return "\n\n".join(system), turns[:-1], turns[-1]["content"]


def _text(content: object, where: str) -> str:
    """A message's text: a string, or an array of text parts (images and audio are refused)."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        pieces = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(where, "Only text content is supported (no images, audio or files).")
            pieces.append(part["text"])
        text = "".join(pieces)
    else:
        raise BadRequest(where, "content must be a string or an array of text parts.")
    problem = unstorable(text)
    if problem:
        raise BadRequest(where, f"content {problem}.")
    return text


def _params(body: dict, base: GenerationParams | None) -> GenerationParams:
    values: dict = {}
    for name in ("temperature", "top_p", "repetition_penalty"):
        if body.get(name) is not None:
            values[name] = body[name]
    limit = body.get("max_completion_tokens")
    limit_name = "max_completion_tokens"
    if limit is None:
        limit, limit_name = body.get("max_tokens"), "max_tokens"
    if limit is not None:
        values["max_new_tokens"] = limit
    stop = body.get("stop")
    if stop is not None:
        values["stop"] = [stop] if isinstance(stop, str) else stop
    try:
        return GenerationParams.from_dict(values, base=base)
    except InvalidParams as exc:
        message = str(exc)
        param = message.split(" ", 1)[0]
        if param == "max_new_tokens":
            param, message = limit_name, message.replace("max_new_tokens", limit_name)
        raise BadRequest(param, message) from None


def _include_usage(body: dict) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise BadRequest("stream_options", "stream_options must be an object with a boolean include_usage.")
    if not body.get("stream"):
        raise BadRequest("stream_options", "stream_options is only allowed when stream is true.")
    return options.get("include_usage", False)


# -- answers ---------------------------------------------------------------------


def error(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_error(message: str, status: int) -> dict:
    """An error no view shaped (Django's error pages, the body limit), typed by its HTTP status."""
    return error(message, "server_error" if status >= 500 else "invalid_request_error")


def usage(end: dict) -> dict:
    prompt = end["usage"]["prompt_tokens"] or 0
    completion = end["usage"]["completion_tokens"] or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(end: dict) -> str:
    return "length" if end["finish_reason"] == "length" else "stop"


def completion(completion_id: str, model: str, text: str, end: dict) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason(end),
                "logprobs": None,
            }
        ],
        "usage": usage(end),
    }


def chunk(completion_id: str, model: str, delta: dict, reason: str | None = None) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}],
    }


def usage_chunk(completion_id: str, model: str, end: dict) -> dict:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": usage(end),
    }


def models(ids: list[str], created: int) -> dict:
    data = [{"id": model, "object": "model", "created": created, "owned_by": "chatsite"} for model in ids]
    return {"object": "list", "data": data}
