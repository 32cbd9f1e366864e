"""Batch prompts: run a file of prompts through the model and keep each as a
`source=batch` conversation for review in the admin.

The `batch_prompts` command is a thin shell around this module:

1. `read_prompts()` parses the input (text or JSONL) into `Prompt`s and
   `BadLine`s; nothing here needs the model yet, so a bad file fails fast.
2. `measure()` counts each prompt's tokens with this process's engine (local
   mode) and turns prompts that leave no room in the model's context for a
   reply into `BadLine`s; in worker mode the workers refuse those instead.
3. `plan()` sorts prompts by token count, so the rows the engine decodes
   together are of similar length (less padding, fewer wasted steps).
4. `BatchRunner.run()` makes each prompt a conversation whose reply is an
   ordinary turn (conversations.live.turns), the same path as the chat and
   the API: its quota hold, its end (replies.finish) and its runner (local or
   worker). Up to `batch_size` turns are on the model at once, and the engine
   batches them as it batches simultaneous chats. Output lines are written
   in input order as soon as every earlier line is done.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO, Any

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model

from inference import GenerationParams, InvalidParams

from .live import frames, turns
from .models import Conversation, Message
from .review import quotas

logger = logging.getLogger(__name__)

FORMATS = ("auto", "txt", "jsonl")
JSONL_KEYS = {"prompt", "system", "params"}


@dataclass
class Prompt:
    """One good input line, ready to run."""

    line: int
    text: str
    system: str
    params: GenerationParams
    tokens: int = 0

    def messages(self) -> list[dict]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": self.text}]


@dataclass
class BadLine:
    """An input line that was reported and skipped."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class Summary:
    total: int = 0  # prompts planned (good lines)
    done: int = 0  # prompts that went through the model (even if it failed them)
    failed: int = 0  # generation errors among `done`
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    aborted: str = ""  # why the model stopped taking prompts, if it did
    quota: str = ""  # the user's daily token quota ran out, if it did

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def describe(self, bad_lines: int = 0) -> str:
        failed = self.failed + bad_lines
        return (
            f"{self.done} of {self.total + bad_lines} prompts done, {failed} failed; "
            f"{self.completion_tokens} tokens generated ({self.prompt_tokens} prompt tokens) "
            f"in {self.seconds:.1f} s, {self.tokens_per_s:.1f} tokens/s"
        )


# -- reading -----------------------------------------------------------------


def detect_format(name: str, lines: list[str]) -> str:
    """`txt` or `jsonl`: by the file's extension, else by its first non-blank line.

    Standard input (`-`) and other extensions are JSONL when the first
    non-blank line starts with `{`. Only the first line decides, so a text
    file whose later prompts start with `{` is still read as text.
    """
    lowered = name.lower()
    if lowered.endswith(".jsonl"):
        return "jsonl"
    if lowered.endswith(".txt"):
        return "txt"
    first = next((line.strip() for line in lines if line.strip()), "")
    return "jsonl" if first.startswith("{") else "txt"


def read_prompts(
    lines: Iterable[str], fmt: str, base: GenerationParams, system: str = ""
) -> tuple[list[Prompt], list[BadLine]]:
    """Parse input lines (1-based numbering) into prompts and bad lines.

    `base` gives the parameters a JSONL line's `params` start from; `system`
    is the default system prompt, which a JSONL line's `system` replaces.
    Blank lines are skipped in both formats.
    """
    prompts, bad = [], []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            if fmt == "jsonl":
                prompts.append(_parse_jsonl(number, raw, base, system))
            else:
                prompts.append(Prompt(number, raw.strip(), system, base))
        except ValueError as exc:  # InvalidParams is a ValueError too (see _parse_jsonl)
            bad.append(BadLine(number, str(exc)))
    return prompts, bad


def _parse_jsonl(number: int, raw: str, base: GenerationParams, system: str) -> Prompt:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - JSONL_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; expected prompt, system, params")
    prompt = data.get("prompt")
    if prompt is None:
        raise ValueError('missing "prompt"')
    if not isinstance(prompt, str):
        raise ValueError('"prompt" must be a string')
    if not prompt.strip():
        raise ValueError('"prompt" is empty')
    line_system = data.get("system", system)
    if not isinstance(line_system, str):
        raise ValueError('"system" must be a string')
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise ValueError('"params" must be an object')
    try:
        line_params = GenerationParams.from_dict(params, base=base)
    except InvalidParams as exc:
        raise ValueError(f"bad params: {exc}") from None
    return Prompt(number, prompt, line_system, line_params)


def measure(prompts: list[Prompt], engine: Any) -> tuple[list[Prompt], list[BadLine]]:
    """Count each prompt's tokens; a prompt that leaves no room for even one
    new token in the model's context becomes a bad line instead of an
    engine error halfway through a batch."""
    context = engine.info.context_length
    fitting, bad = [], []
    for prompt in prompts:
        prompt.tokens = engine.count_tokens(prompt.messages())
        if prompt.tokens + 1 > context:
            bad.append(
                BadLine(prompt.line, f"prompt is too long: {prompt.tokens} tokens, the model's context is {context}")
            )
        else:
            fitting.append(prompt)
    return fitting, bad


def plan(prompts: list[Prompt]) -> list[Prompt]:
    """The order prompts go to the model: shortest first, so the rows decoded together pad little.

    Prompts with different parameters may run together: the engine applies
    each row's own temperature, top_p, repetition penalty and max_new_tokens.
    Without token counts (worker mode) the input order stays.
    """
    return sorted(prompts, key=lambda p: (p.tokens, p.line))


# -- storing -----------------------------------------------------------------


def batch_user(username: str):
    """The user batch conversations belong to; created as an ordinary user
    with an unusable password if missing (it is for review, not for logging in)."""
    User = get_user_model()
    user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
    if user is None:
        user = User.objects.create_user(username, password=None)
    return user


@database_sync_to_async
def _new_conversation(prompt: Prompt, user, model: str) -> str:
    """The prompt's `source=batch` conversation, empty: its turn adds the messages."""
    conversation = Conversation(
        user=user, system_prompt=prompt.system, model_name=model, source=Conversation.Source.BATCH
    )
    conversation.set_params(prompt.params.to_dict())
    conversation.save()
    return str(conversation.id)


@database_sync_to_async
def _discard(conversation_id: str) -> None:
    """A conversation whose turn was refused (a spent quota) holds nothing: it goes."""
    Conversation.objects.filter(id=conversation_id).delete()


@database_sync_to_async
def _stored_reply(message_id: int) -> Message:
    return Message.objects.get(id=message_id)


def output_record(prompt: Prompt, reply: Message, conversation_id: str, error: str = "") -> dict:
    record = {
        "line": prompt.line,
        "prompt": prompt.text,
        "reply": reply.content,
        "finish_reason": reply.finish_reason,
        "conversation_id": conversation_id,
        "prompt_tokens": reply.prompt_tokens or 0,
        "completion_tokens": reply.completion_tokens or 0,
        "duration_ms": reply.duration_ms or 0,
    }
    if error:
        record["error"] = error
    return record


# -- running -----------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one prompt: its output record, or why its turn never started."""

    prompt: Prompt
    record: dict | None = None
    refused: turns.Refused | None = None
    error: dict | None = None  # the turn's `error` frame, if it had one


@dataclass
class BatchRunner:
    """Runs prompts as turns, `batch_size` at a time, and writes output in input order.

    `write` takes one output line (JSON, no newline); `report` takes one
    message for the user (a failed row). `progress` is called with the
    number of prompts each finished turn completed. `stop` (Ctrl-C) ends the
    run once the turns on the model have finished; no new one starts.
    """

    user: Any
    model: str
    write: Callable[[str], None]
    report: Callable[[str], None]
    batch_size: int = 8
    progress: Callable[[int], None] = lambda n: None
    stop: threading.Event = field(default_factory=threading.Event)

    async def run(self, prompts: list[Prompt]) -> Summary:
        """Run `prompts` in this order. Returns the summary; output for finished
        prompts whose earlier lines never ran is still written, at the end."""
        self._in_order = sorted(prompts, key=lambda p: p.line)
        self._pending: dict[int, dict] = {}  # finished lines waiting for an earlier one
        self._next = 0
        summary = Summary(total=len(prompts))
        started = time.monotonic()
        running: set[asyncio.Task] = set()
        for prompt in prompts:
            while len(running) >= self.batch_size:
                running = await self._settle_some(running, summary)
            if self.stop.is_set():
                summary.interrupted = True
            if summary.interrupted or summary.quota or summary.aborted:
                break
            running.add(asyncio.create_task(self._one(prompt)))
        while running:
            running = await self._settle_some(running, summary)
        # Stopped early: lines after a gap (a prompt that never ran) are still
        # kept, in input order, rather than dropped.
        for line in sorted(self._pending):
            self.write(json.dumps(self._pending[line], ensure_ascii=False))
        summary.seconds = time.monotonic() - started
        return summary

    async def _settle_some(self, running: set[asyncio.Task], summary: Summary) -> set[asyncio.Task]:
        done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            await self._count(task.result(), summary)
        return running

    async def _one(self, prompt: Prompt) -> Outcome:
        """One prompt as a turn, followed to its end."""
        conversation_id = await _new_conversation(prompt, self.user, self.model)
        error = None
        async with frames.follow(conversation_id) as followed:
            try:
                turn = await turns.start(conversation_id, "send", prompt.params, prompt.text, model=self.model)
            except turns.Refused as exc:
                await _discard(conversation_id)
                return Outcome(prompt, refused=exc)
            async for frame in followed.until_end(turn.message_id):
                if frame["type"] == "error":
                    error = frame
        reply = await _stored_reply(turn.message_id)
        record = output_record(prompt, reply, conversation_id, error["message"] if error else "")
        return Outcome(prompt, record, error=error)

    async def _count(self, outcome: Outcome, summary: Summary) -> None:
        if outcome.refused is not None:
            if outcome.refused.code == "rate_limited":
                summary.quota = await quota_error(self.user)
            else:
                summary.aborted = summary.aborted or outcome.refused.message
            return
        record = outcome.record
        assert record is not None
        summary.done += 1
        summary.prompt_tokens += record["prompt_tokens"]
        summary.completion_tokens += record["completion_tokens"]
        if record["finish_reason"] == "error":
            summary.failed += 1
            self.report(f"line {record['line']}: generation failed: {record.get('error') or 'unknown error'}")
            if outcome.error is not None and outcome.error["code"] == "model_unavailable":
                # Every later prompt would fail the same way.
                summary.aborted = summary.aborted or outcome.error["message"]
        self._pending[record["line"]] = record
        while self._next < len(self._in_order) and self._in_order[self._next].line in self._pending:
            self.write(json.dumps(self._pending.pop(self._in_order[self._next].line), ensure_ascii=False))
            self._next += 1
        self.progress(1)


@database_sync_to_async
def quota_error(user) -> str:
    """Why the run stopped for the user's quota, naming the user."""
    status = quotas.status(user.pk)
    return describe_quota(user, status["used"], status["limit"])


def describe_quota(user, used: int, limit: int) -> str:
    return (
        f"user {user.get_username()!r} has used {used} of their {limit} tokens for today "
        "(the limit resets at 00:00 UTC)"
    )


def read_input(path: str, stdin: IO[str]) -> list[str]:
    """The input's lines; `-` is standard input. Raises OSError or
    UnicodeDecodeError for a file that cannot be read as UTF-8 text."""
    if path == "-":
        return stdin.read().splitlines()
    with open(path, encoding="utf-8-sig") as handle:
        return handle.read().splitlines()
