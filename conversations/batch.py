"""Batch prompts: run a file of prompts through the model and keep each as a
`source=batch` conversation for review in the admin.

The `batch_prompts` command is a thin shell around this module:

1. `read_prompts()` parses the input (text or JSONL) into `Prompt`s and
   `BadLine`s; nothing here needs the model yet, so a bad file fails fast.
2. `measure()` counts each prompt's tokens with the engine and turns prompts
   that leave no room in the model's context for a reply into `BadLine`s.
3. `plan_batches()` sorts prompts by token count so rows of similar length
   share a batch (less padding, fewer wasted steps).
4. `BatchRunner.run()` makes one `engine.generate_batch()` call a batch,
   stores every reply, and writes output lines in input order as soon as
   every earlier line is done.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable

from django.contrib.auth import get_user_model
from django.db import transaction

from inference import EngineClosed, GenerationParams, InferenceError, InvalidParams, Request, Result

from . import quotas
from .models import Conversation, Message

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
    aborted: str = ""  # why the engine stopped taking batches, if it did
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


def measure(prompts: list[Prompt], engine) -> tuple[list[Prompt], list[BadLine]]:
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


def plan_batches(prompts: list[Prompt], batch_size: int) -> list[list[Prompt]]:
    """Split prompts into batches of at most `batch_size`, shortest first.

    Sorting by token count keeps rows of similar length together, so a batch
    pads little. Prompts with different parameters may share a batch: the
    engine's generate_batch applies each row's own temperature, top_p,
    repetition penalty and max_new_tokens.
    """
    ordered = sorted(prompts, key=lambda p: (p.tokens, p.line))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


# -- storing -----------------------------------------------------------------


def batch_user(username: str):
    """The user batch conversations belong to; created as an ordinary user
    with an unusable password if missing (it is for review, not for logging in)."""
    User = get_user_model()
    user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
    if user is None:
        user = User.objects.create_user(username, password=None)
    return user


def store(prompt: Prompt, result: Result, user, model_name: str) -> Conversation:
    """Save one prompt and its reply as a `source=batch` conversation."""
    conversation = Conversation(
        user=user, system_prompt=prompt.system, model_name=model_name, source=Conversation.Source.BATCH
    )
    conversation.title = conversation.title_from(prompt.text)
    conversation.set_params(prompt.params.to_dict())
    conversation.save()
    conversation.append(Message.Role.USER, prompt.text)
    reply = conversation.append(Message.Role.ASSISTANT, status=Message.Status.STREAMING, model_name=model_name)
    reply.finish(
        result.finish_reason,
        result.text,
        {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "ttft_ms": result.ttft_ms,
            "duration_ms": result.duration_ms,
        },
    )
    return conversation


def output_record(prompt: Prompt, result: Result, conversation: Conversation) -> dict:
    record = {
        "line": prompt.line,
        "prompt": prompt.text,
        "reply": result.text,
        "finish_reason": result.finish_reason,
        "conversation_id": str(conversation.id),
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "duration_ms": result.duration_ms,
    }
    if result.error:
        record["error"] = result.error
    return record


def failed_result(prompt: Prompt, error: str) -> Result:
    """A result for a row whose whole batch the engine refused."""
    return Result(
        text="",
        finish_reason="error",
        prompt_tokens=prompt.tokens,
        completion_tokens=0,
        ttft_ms=0,
        duration_ms=0,
        tokens_per_s=0.0,
        dropped_turns=0,
        error=error,
    )


# -- running -----------------------------------------------------------------


@dataclass
class BatchRunner:
    """Runs planned batches, stores replies and writes output in input order.

    `write` takes one output line (JSON, no newline); `report` takes one
    message for the user (a failed row). `progress` is called with the
    number of prompts each finished batch completed.
    """

    engine: object
    user: object
    write: Callable[[str], None]
    report: Callable[[str], None]
    progress: Callable[[int], None] = lambda n: None
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, batches: list[list[Prompt]]) -> Summary:
        """Run every batch unless `stop` is set, which ends the run between
        batches, or the engine closes. Returns the summary; output for
        finished prompts whose earlier lines never ran is still written, at
        the end."""
        model_name = self.engine.info.model_name
        in_order = sorted((p for batch in batches for p in batch), key=lambda p: p.line)
        pending: dict[int, dict] = {}  # finished lines waiting for an earlier one
        next_index = 0
        summary = Summary(total=len(in_order))
        started = time.monotonic()
        for batch in batches:
            if self.stop.is_set():
                summary.interrupted = True
                break
            batch, holds = self._hold(batch, summary)
            try:
                results = self._generate(batch) if batch else []
            except EngineClosed as exc:
                # Every later batch would fail the same way: stop, keep what finished.
                summary.aborted = str(exc)
                for usage_id, held in holds:
                    quotas.release(usage_id, held, 0, replies=0)
                break
            with transaction.atomic():
                for prompt, result, (usage_id, held) in zip(batch, results, holds, strict=True):
                    quotas.release(usage_id, held, result.prompt_tokens + result.completion_tokens)
                    conversation = store(prompt, result, self.user, model_name)
                    pending[prompt.line] = output_record(prompt, result, conversation)
                    summary.done += 1
                    summary.prompt_tokens += result.prompt_tokens
                    summary.completion_tokens += result.completion_tokens
                    if result.finish_reason == "error":
                        summary.failed += 1
                        self.report(f"line {prompt.line}: generation failed: {result.error or 'unknown error'}")
            while next_index < len(in_order) and in_order[next_index].line in pending:
                self.write(json.dumps(pending.pop(in_order[next_index].line), ensure_ascii=False))
                next_index += 1
            self.progress(len(batch))
            if summary.quota:
                break
        # Stopped early: lines after a gap (a prompt that never ran) are still
        # kept, in input order, rather than dropped.
        for line in sorted(pending):
            self.write(json.dumps(pending[line], ensure_ascii=False))
        summary.seconds = time.monotonic() - started
        return summary

    def _hold(self, batch: list[Prompt], summary: Summary) -> tuple[list[Prompt], list[tuple[int, int]]]:
        """The prompts of the batch the user's quota admits, each with its hold (conversations.quotas);
        a refusal is noted in the summary and ends the run after these."""
        admitted, holds = [], []
        for prompt in batch:
            tokens = prompt.tokens + prompt.params.max_new_tokens
            try:
                holds.append((quotas.reserve(self.user.pk, tokens), tokens))
            except quotas.QuotaExceeded as exc:
                summary.quota = quota_error(self.user, exc)
                break
            admitted.append(prompt)
        return admitted, holds

    def _generate(self, batch: list[Prompt]) -> list[Result]:
        """The batch's results from one generate_batch call; a batch the engine
        refuses (a request it finds invalid) fails row by row. Raises
        EngineClosed when the engine takes nothing any more."""
        requests = [Request(messages=p.messages(), params=p.params, cancel=threading.Event()) for p in batch]
        try:
            results = self.engine.generate_batch(requests)
        except EngineClosed:
            raise
        except InferenceError as exc:
            # The engine refused the whole batch: every row fails, the run goes on.
            logger.warning("batch of %d failed: %s", len(batch), exc)
            return [failed_result(p, str(exc)) for p in batch]
        return results


def quota_error(user, exc: quotas.QuotaExceeded) -> str:
    return (
        f"user {user.get_username()!r} has used {exc.used} of their {exc.limit} tokens for today "
        "(the limit resets at 00:00 UTC)"
    )


def read_input(path: str, stdin: IO[str]) -> list[str]:
    """The input's lines; `-` is standard input. Raises OSError or
    UnicodeDecodeError for a file that cannot be read as UTF-8 text."""
    if path == "-":
        return stdin.read().splitlines()
    with open(path, encoding="utf-8-sig") as handle:
        return handle.read().splitlines()
