"""What an engine is, without torch: :class:`Engine` lists what an engine must implement.

As Django's ``sessions/backends/base.py`` does for session stores. The local
engine (``engine.TransformersEngine``) implements it, and so does the web
app's engine for a model served by OpenAI-compatible endpoints; a site that
serves only endpoints never imports torch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from .config import EngineConfig
from .stats import EngineStats
from .streaming import Event, Request, Result


@dataclass(frozen=True)
class EngineInfo:
    """What was loaded, where, and how long it took."""

    model_name: str
    device: str
    dtype: str
    parameters: int
    load_seconds: float
    context_length: int
    quant: str = "none"  # none, int8 or int4: see quant.py


class Engine:
    """What an engine must implement. Subclasses set ``config``, ``info`` and ``stats``."""

    config: EngineConfig
    info: EngineInfo
    stats: EngineStats

    def stream(self, request: Request) -> AsyncIterator[Event]:
        """Generate one reply, yielding Queued*, Started, Chunk* and exactly one Finished.

        Never blocks the event loop. Raises QueueFull at once when the queue
        is full, InvalidParams or PromptTooLong before anything starts.
        Cancelling the consuming task cancels the request.
        """
        raise NotImplementedError("subclasses of Engine must provide a stream() method")

    def generate_batch(self, requests: list[Request]) -> list[Result]:
        """Generate replies for ``requests`` together (blocking); results in input order."""
        raise NotImplementedError("subclasses of Engine must provide a generate_batch() method")

    def count_tokens(self, messages: list[dict]) -> int:
        """The prompt length of ``messages`` in tokens, before any trimming."""
        raise NotImplementedError("subclasses of Engine must provide a count_tokens() method")

    def context_tokens(self) -> int:
        """The model's context: the prompt and its reply, in tokens."""
        return self.info.context_length

    def fits(self, messages: list[dict], max_new_tokens: int, prefill: str = "") -> bool:
        """Whether ``messages`` (and a reply begun with ``prefill``) leave room for ``max_new_tokens``
        untrimmed: when not, stream() leaves the oldest turns out."""
        raise NotImplementedError("subclasses of Engine must provide a fits() method")

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting requests; unfinished ones end with finish_reason "cancelled".

        Waits up to ``timeout`` seconds for the work in progress to stop.
        """

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
