"""A model served by OpenAI-compatible endpoints, behind inference.Engine: the local engine's events.

`stream()` sends the request to one replica of the model (the one the
registry routes the conversation to), through the `openai` package's async
client, and yields `Started`, `Chunk`s and one `Finished`, as the local engine
does. What the endpoint does wrong becomes `ModelUnavailable`:

- before the first text (refused, an HTTP error, no answer within
  CHAT_ENDPOINT_TIMEOUT_S): the next replica is tried; when none is left the
  turn fails, its text empty;
- after it (the server died, or went silent for the timeout): the turn fails
  with the text so far kept.

A stop (the request's `cancel`) closes the HTTP stream, which makes llama.cpp,
vLLM and Ollama stop generating. Usage comes from the stream's last chunk
where the endpoint sends one. Otherwise the completion is counted as its
chunks (llama.cpp, vLLM and Ollama stream a token a chunk), and the prompt by
the endpoint's tokenizer, asked while the reply streams, else estimated
(conversations.endpoints.tokens; docs/models.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx2
import openai

from inference import (
    Chunk,
    Engine,
    Finished,
    GenerationParams,
    InvalidParams,
    ModelUnavailable,
    PromptTooLong,
    Request,
    Result,
    Started,
)

from .tokens import estimate, fit_messages, message_tokens

if TYPE_CHECKING:
    from .registry import EndpointState, Registry

logger = logging.getLogger(__name__)

# How often a waiting stream checks its request's cancel flag (a threading.Event, set by a stop).
CANCEL_POLL_SECONDS = 0.05
REASONS = {"stop": "stop", "length": "length"}  # anything else an endpoint says ends the reply as stop


class FailedBeforeText(Exception):
    """The replica failed before it produced any text: another replica may serve the turn."""


class EndpointEngine(Engine):
    """One model id, served by the replicas the registry knows for it."""

    def __init__(self, model_id: str, registry: Registry) -> None:
        self.model_id = model_id
        self.registry = registry

    async def stream(self, request: Request) -> AsyncIterator[Any]:
        """See inference.Engine.stream. Raises ModelUnavailable when no replica can serve the turn."""
        if not isinstance(request.params, GenerationParams):
            raise InvalidParams("params must be GenerationParams (use GenerationParams.from_dict)")
        failures: list[str] = []
        replicas = self.registry.route(self.model_id, request.affinity)
        if not replicas and self.registry.unasked():
            # A process just started: its endpoints have not been asked yet (the discovery thread's first pass).
            await asyncio.to_thread(self.registry.refresh)
            replicas = self.registry.route(self.model_id, request.affinity)
        for replica in replicas:
            try:
                async for event in self._stream_from(replica, request):
                    yield event
                return
            except FailedBeforeText as exc:
                logger.warning("%s on %s failed before its first token: %s", self.model_id, replica.name, exc)
                self.registry.failed(replica.name, str(exc))
                failures.append(f"{replica.name}: {exc}")
        reason = "; ".join(failures) or "no endpoint serving it is up"
        raise ModelUnavailable(f"The model {self.model_id} is unavailable ({reason}).")

    async def _stream_from(self, replica: EndpointState, request: Request) -> AsyncIterator[Any]:
        params = request.params
        reply = [{"role": "assistant", "content": request.prefill}] if request.prefill else []
        messages, dropped = fit_messages(request.messages, self._budget(params.max_new_tokens, reply))
        if not messages:
            raise PromptTooLong(f"the newest message alone does not fit in {self.model_id}'s context")
        messages += reply
        submitted = time.monotonic()
        stream = await self._open(replica, messages, params)
        counting: asyncio.Future | None = None
        try:
            yield Started(prompt_tokens=sum(estimate(m["content"]) for m in messages), dropped_turns=dropped)
            async with stream:
                reading = _Reading(stream, request.cancel)
                async for event in reading.events():
                    # Counted while the reply streams, in case the endpoint sends no usage (the module's
                    # doc); asked after the first token, so the endpoint reads the prompt first.
                    counting = counting or asyncio.ensure_future(self.registry.prompt_tokens(replica, messages))
                    yield event
            counted = await counting if counting is not None else self.count_tokens(messages)
            usage = reading.usage or (counted, len(reading.parts))
        finally:
            if counting is not None:
                counting.cancel()
        text = "".join(reading.parts)
        finished = time.monotonic()
        first = reading.first_at or finished
        generating = max(finished - first, 1e-3)
        yield Finished(
            Result(
                text=text,
                finish_reason="cancelled" if reading.cancelled else REASONS.get(reading.finish_reason or "", "stop"),
                prompt_tokens=usage[0],
                completion_tokens=usage[1],
                ttft_ms=round((first - submitted) * 1000),
                duration_ms=round((finished - submitted) * 1000),
                tokens_per_s=round(usage[1] / generating, 1),
                dropped_turns=dropped,
            )
        )

    async def _open(self, replica: EndpointState, messages: list[dict], params: GenerationParams):
        """The open stream of the replica's answer; FailedBeforeText if it refuses or does not answer."""
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            # Not OpenAI's, but vLLM's and Chatsite's name; others ignore it (docs/models.md).
            "extra_body": {"repetition_penalty": params.repetition_penalty},
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if messages[-1]["role"] == "assistant":
            # A Continue: vLLM's and Chatsite's names for going on with the last message; llama.cpp's
            # server and Ollama do so unasked (docs/models.md).
            body["extra_body"] |= {"continue_final_message": True, "add_generation_prompt": False}
        try:
            return await self.registry.client(replica).chat.completions.create(**body)
        except (openai.APIError, httpx2.HTTPError) as exc:
            raise FailedBeforeText(_describe(exc)) from None

    def count_tokens(self, messages: list[dict]) -> int:
        """An estimate (docs/models.md): the endpoint's own count comes with the reply."""
        return sum(estimate(m.get("content") or "") for m in messages)

    def fits(self, messages: list[dict], max_new_tokens: int, prefill: str = "") -> bool:
        """See Engine.fits: by the estimate stream() trims with."""
        reply = [{"role": "assistant", "content": prefill}] if prefill else []
        return sum(message_tokens(m) for m in messages) <= self._budget(max_new_tokens, reply)

    def context_tokens(self) -> int:
        return self.registry.context_length(self.model_id)

    def _budget(self, max_new_tokens: int, reply: list[dict]) -> int:
        """The prompt's tokens at most: the context less the reply's room and what it began with."""
        return self.context_tokens() - max_new_tokens - self.count_tokens(reply)

    def close(self, timeout: float = 30.0) -> None:
        """Nothing to stop here: each stream closes with its turn."""


class _Reading:
    """One open stream read to its end (or to a stop): the text's parts, the finish reason, the usage."""

    def __init__(self, stream: Any, cancel) -> None:
        self.stream = stream
        self.cancel = cancel
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: tuple[int, int] | None = None
        self.first_at: float | None = None
        self.cancelled = False

    async def events(self) -> AsyncIterator[Chunk]:
        chunks = aiter(self.stream)
        while True:
            try:
                chunk = await self._next(chunks)
            except StopAsyncIteration:
                if self.finish_reason is None:  # cut off: a finished reply says why it finished
                    cut = "the endpoint ended the stream without finishing the reply"
                    if not self.parts:
                        raise FailedBeforeText(cut) from None
                    raise ModelUnavailable(cut) from None
                return
            except (openai.APIError, httpx2.HTTPError) as exc:
                if not self.parts:
                    raise FailedBeforeText(_describe(exc)) from None
                raise ModelUnavailable(f"the endpoint stopped answering mid-reply ({_describe(exc)})") from None
            if chunk is None:  # stopped: leaving the `async with` closes the HTTP stream
                self.cancelled = True
                return
            if chunk.usage is not None:
                self.usage = (chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0)
            for choice in chunk.choices:
                self.finish_reason = choice.finish_reason or self.finish_reason
                if choice.delta.content:
                    self.first_at = self.first_at or time.monotonic()
                    self.parts.append(choice.delta.content)
                    # A token a chunk, as the completion is counted (above), so a reply cut off is charged too.
                    yield Chunk(choice.delta.content, len(self.parts))

    async def _next(self, chunks) -> Any:
        """The next chunk, or None once the request is cancelled; the read's own timeout is the client's."""
        if self.cancel.is_set():
            return None
        waiting = asyncio.ensure_future(anext(chunks))
        try:
            while True:
                done, _ = await asyncio.wait({waiting}, timeout=CANCEL_POLL_SECONDS)
                if done:
                    return waiting.result()
                if self.cancel.is_set():
                    return None
        finally:
            if not waiting.done():
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}"
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return "no answer within the timeout"
    return type(exc).__name__
