"""Benchmark users: sign up over HTTP, open conversations, chat over the WebSocket.

Each turn is a fresh conversation (POST /c/new/ before the clock starts), so
every prompt is the raw baseline's prompt (default system prompt plus one
user message) and TTFT can be compared with the raw prefill. The message
starts with a number no other turn of the run has ("#7 Explain ..."), so no
turn repeats an earlier prompt: the server keeps the keys and values of
prompts it has read (inference/prefix.py) and would otherwise read a
repeated prompt's last token only. What every turn shares is what new chats
share: the rendered system prompt.

Per turn, measured on the client: TTFT = ``send`` to the first ``token`` frame;
stream tokens/s = (completion_tokens - 1) / (``end`` - first ``token``), the
completion tokens coming from the ``end`` frame (the first token belongs to
TTFT, as in the raw figures).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import statistics
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import requests
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

TURN_TIMEOUT = 600.0
# Numbers that make every turn's message new (see the module doc).
_serials = itertools.count(1)


class SetupFailed(RuntimeError):
    """Sign-up or conversation creation did not work; the message says which response."""


@dataclass
class User:
    """A signed-up account: its cookies for the WebSocket handshake."""

    base_url: str
    name: str
    session: requests.Session

    @classmethod
    def sign_up(cls, base_url: str, name: str) -> User:
        """Create ``name`` through the sign-up form (the first account becomes admin). Raises SetupFailed."""
        session = requests.Session()
        session.trust_env = False
        session.get(f"{base_url}/accounts/signup/", timeout=30).raise_for_status()
        password = "bench-" + secrets.token_urlsafe(12)
        response = session.post(
            f"{base_url}/accounts/signup/",
            data={
                "csrfmiddlewaretoken": session.cookies.get("csrftoken", ""),
                "username": name,
                "password1": password,
                "password2": password,
            },
            headers={"Referer": f"{base_url}/accounts/signup/"},
            allow_redirects=False,
            timeout=60,
        )
        if response.status_code != 302 or "sessionid" not in session.cookies:
            raise SetupFailed(f"sign-up of {name!r} answered {response.status_code}: {response.text[:300]}")
        return cls(base_url, name, session)

    def new_conversation(self, max_new_tokens: int) -> str:
        """A new conversation with greedy settings; returns its id. Raises SetupFailed."""
        response = self.session.post(
            f"{self.base_url}/c/new/",
            data={
                "csrfmiddlewaretoken": self.session.cookies.get("csrftoken", ""),
                "system_prompt": "",
                "temperature": "0",
                "top_p": "1",
                "max_new_tokens": str(max_new_tokens),
                "repetition_penalty": "1",
            },
            headers={"Referer": f"{self.base_url}/"},
            allow_redirects=False,
            timeout=30,
        )
        location = response.headers.get("Location", "")
        if response.status_code != 302 or not location.startswith("/c/"):
            raise SetupFailed(f"POST /c/new/ answered {response.status_code} {location!r}: {response.text[:300]}")
        return location.strip("/").split("/")[-1]

    def ws_headers(self) -> dict[str, str]:
        cookies = "; ".join(f"{key}={value}" for key, value in self.session.cookies.items())
        return {"Cookie": cookies}


@dataclass
class Turn:
    """What one turn looked like from the client."""

    user: str
    ok: bool = False
    error: str = ""
    sent_at: float = 0.0
    ttft_s: float = 0.0
    end_at: float = 0.0
    first_at: float = 0.0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    token_frames: int = 0
    queued_frames: int = 0
    finish_reason: str = ""
    server_timing: dict = field(default_factory=dict)
    text: str = ""  # the reply as its token frames brought it

    @property
    def stream_tokens_per_s(self) -> float | None:
        if not self.ok or self.completion_tokens < 2 or self.end_at <= self.first_at:
            return None
        return (self.completion_tokens - 1) / (self.end_at - self.first_at)


async def chat_turn(
    user: User, conversation_id: str, prompt: str, max_new_tokens: int, model: str | None = None
) -> Turn:
    """Send ``prompt`` on a fresh socket (on ``model``, else the chat's) and read frames until ``end`` or ``error``."""
    turn = Turn(user=user.name)
    parts = urlsplit(user.base_url)
    uri = f"ws://{parts.netloc}/ws/chat/{conversation_id}/"
    params = {"temperature": 0, "top_p": 1, "repetition_penalty": 1, "max_new_tokens": max_new_tokens}
    frame = {"type": "send", "content": prompt, "params": params | ({"model": model} if model else {})}
    try:
        # No keepalive pings (browsers send none): under load a late pong would
        # count as the client's error, not the server's.
        async with connect(
            uri,
            origin=f"{parts.scheme}://{parts.netloc}",
            additional_headers=user.ws_headers(),
            proxy=None,
            open_timeout=60,
            max_size=None,
            ping_interval=None,
        ) as socket:
            turn.sent_at = time.perf_counter()
            await socket.send(json.dumps(frame))
            async with asyncio.timeout(TURN_TIMEOUT):
                async for raw in socket:
                    now = time.perf_counter()
                    message = json.loads(raw)
                    kind = message.get("type")
                    if kind == "token":
                        if not turn.token_frames:
                            turn.first_at = now
                            turn.ttft_s = now - turn.sent_at
                        turn.token_frames += 1
                        turn.text += message.get("text", "")
                    elif kind == "queued":
                        turn.queued_frames += 1
                    elif kind == "error":
                        turn.error = f"{message.get('code')}: {message.get('message')}"
                        return turn
                    elif kind == "end":
                        turn.end_at = now
                        usage = message.get("usage") or {}
                        turn.completion_tokens = int(usage.get("completion_tokens", 0))
                        turn.prompt_tokens = int(usage.get("prompt_tokens", 0))
                        turn.finish_reason = message.get("finish_reason", "")
                        turn.server_timing = message.get("timing") or {}
                        if turn.finish_reason not in ("stop", "length"):
                            turn.error = f"finish_reason {turn.finish_reason!r}"
                        elif not turn.token_frames:
                            turn.error = "end without any token frame"
                        else:
                            turn.ok = True
                        return turn
            turn.error = "socket closed before end"
    except TimeoutError:
        turn.error = f"no end within {TURN_TIMEOUT:.0f}s"
    except (OSError, WebSocketException) as exc:
        turn.error = f"{type(exc).__name__}: {exc}"
    return turn


async def user_session(user: User, conversations: list[str], prompts: list[str], max_new_tokens: int) -> list[Turn]:
    """One user's turns, one after another, each in its own conversation."""
    turns = []
    for conversation_id, prompt in zip(conversations, prompts, strict=True):
        turns.append(await chat_turn(user, conversation_id, prompt, max_new_tokens))
    return turns


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(turns: list[Turn], wall_s: float) -> dict:
    """Aggregate figures of a set of turns that ran in ``wall_s`` seconds."""
    good = [turn for turn in turns if turn.ok]
    ttfts = [turn.ttft_s for turn in good]
    rates = [rate for turn in good if (rate := turn.stream_tokens_per_s) is not None]
    tokens = sum(turn.completion_tokens for turn in good)
    return {
        "turns": len(turns),
        "errors": len(turns) - len(good),
        "error_messages": sorted({turn.error for turn in turns if turn.error})[:5],
        "wall_s": wall_s,
        "completion_tokens": tokens,
        "mean_completion_tokens": tokens / len(good) if good else 0,
        "aggregate_tokens_per_s": tokens / wall_s if wall_s > 0 else 0.0,
        "per_user_tokens_per_s": statistics.mean(rates) if rates else None,
        "stream_tokens_per_s_p50": percentile(rates, 50),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p95_s": percentile(ttfts, 95),
        "ttft_max_s": max(ttfts) if ttfts else None,
        "queued_frames": sum(turn.queued_frames for turn in turns),
        "prompt_tokens": sorted({turn.prompt_tokens for turn in good}),
        "finish_reasons": {
            reason: sum(t.finish_reason == reason for t in good) for reason in sorted({t.finish_reason for t in good})
        },
    }


def numbered(prompt: str) -> str:
    """``prompt`` led by a number no other turn of the run has (see the module doc)."""
    return f"#{next(_serials)} {prompt}"


def run_level(users: list[User], prompts: list[str], turns_each: int, max_new_tokens: int) -> tuple[dict, list[Turn]]:
    """``len(users)`` users chatting at once, ``turns_each`` turns each; returns (summary, turns).

    Conversations are created before the clock starts; the wall time runs from
    the first send to the last end.
    """
    plans = []
    for index, user in enumerate(users):
        conversations = [user.new_conversation(max_new_tokens) for _ in range(turns_each)]
        # Users start on different prompts so a level is not eight copies of one reply.
        texts = [numbered(prompts[(index + turn) % len(prompts)]) for turn in range(turns_each)]
        plans.append((user, conversations, texts))

    async def everyone() -> list[list[Turn]]:
        return await asyncio.gather(*(user_session(u, c, t, max_new_tokens) for u, c, t in plans))

    started = time.perf_counter()
    per_user = asyncio.run(everyone())
    turns = [turn for user_turns in per_user for turn in user_turns]
    sent = [turn.sent_at for turn in turns if turn.sent_at]
    ended = [turn.end_at for turn in turns if turn.end_at]
    wall = (max(ended) - min(sent)) if sent and ended else time.perf_counter() - started
    return summarize(turns, wall), turns


# What every follow-up turn says: short, so its prompt is mostly the first turn and its reply.
FOLLOW_UP = "Now say that in one sentence."


def run_follow_ups(user: User, prompts: list[str], count: int, max_new_tokens: int) -> dict:
    """``count`` two-turn conversations of one user: a prompt, then FOLLOW_UP after its reply.

    The second turn's prompt holds the first prompt and reply (the server
    stores both: inference/prefix.py), so its TTFT is what a conversation's
    next turn costs. Returns the summary of the second turns.
    """
    conversations = [user.new_conversation(max_new_tokens) for _ in range(count)]
    texts = [numbered(prompts[index % len(prompts)]) for index in range(count)]

    async def both_turns() -> list[Turn]:
        follow_ups = []
        for conversation_id, text in zip(conversations, texts, strict=True):
            await chat_turn(user, conversation_id, text, max_new_tokens)
            follow_ups.append(await chat_turn(user, conversation_id, FOLLOW_UP, max_new_tokens))
        return follow_ups

    started = time.perf_counter()
    turns = asyncio.run(both_turns())
    return summarize(turns, time.perf_counter() - started)


def turn_rows(turns: list[Turn]) -> list[dict]:
    """Turns as JSON-ready dicts (for the result file)."""
    rows = []
    for turn in turns:
        row = asdict(turn)
        row["stream_tokens_per_s"] = turn.stream_tokens_per_s
        for key in ("sent_at", "end_at", "first_at"):
            row.pop(key)
        rows.append(row)
    return rows
