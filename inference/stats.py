"""The engine's counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EngineStats:
    """Counters kept by the scheduler thread (read them from anywhere; they only grow).

    ``max_rows`` is the most rows ever decoded together in one step; ``joins``
    counts requests merged into a batch that already had rows; ``prefills``
    counts prompts read, ``prefill_passes`` the forward passes that read them;
    ``generate_calls`` counts generate_batch calls (their jobs run as any others).
    """

    submitted: int = 0
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    errors: int = 0
    prefills: int = 0
    prefill_passes: int = 0
    joins: int = 0
    decode_steps: int = 0
    tokens_generated: int = 0
    max_rows: int = 0
    generate_calls: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)
