"""Generation parameters: validated once, then trusted everywhere.

A :class:`GenerationParams` cannot hold an out-of-range value: the constructor
checks, so ``from_dict`` (user input) and direct construction (code) give the
same guarantees and the same messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import InvalidParams

MAX_NEW_TOKENS_LIMIT = 4096
MAX_STOP_STRINGS = 4  # as OpenAI's API


@dataclass(frozen=True)
class GenerationParams:
    """How one reply is sampled.

    ``temperature`` 0..2 (0 = greedy), ``top_p`` in (0, 1], ``max_new_tokens``
    1..4096 (the engine caps it further to what fits in the context),
    ``repetition_penalty`` 1..2 (1 = off), ``stop`` up to four non-empty strings:
    the reply ends (as "stop") before the first of them it would contain.

    Raises InvalidParams for a wrong type or an out-of-range value.
    """

    temperature: float = 0.7
    top_p: float = 0.9
    # Room for a whole chat answer (a story, a page of code); 256 cut replies off mid-sentence.
    max_new_tokens: int = 1024
    repetition_penalty: float = 1.05
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_number("temperature", self.temperature)
        _check_number("top_p", self.top_p)
        _check_number("repetition_penalty", self.repetition_penalty)
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
            raise InvalidParams("max_new_tokens must be an integer")
        if not 0 <= self.temperature <= 2:
            raise InvalidParams("temperature must be between 0 and 2")
        if not 0 < self.top_p <= 1:
            raise InvalidParams("top_p must be greater than 0 and at most 1")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise InvalidParams(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS_LIMIT}")
        if not 1 <= self.repetition_penalty <= 2:
            raise InvalidParams("repetition_penalty must be between 1 and 2")
        _check_stop(self.stop)
        object.__setattr__(self, "stop", tuple(self.stop))  # a JSON list comes back hashable
        # Store plain floats so equal settings compare and hash equal (0 == 0.0 already,
        # but a Decimal or numpy scalar would not serialise to JSON).
        for name in ("temperature", "top_p", "repetition_penalty"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def greedy(self) -> bool:
        """True when the reply is decoded greedily (temperature 0)."""
        return self.temperature == 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, base: GenerationParams | None = None) -> GenerationParams:
        """Build parameters from user input, keys missing from ``data`` taken from ``base``.

        Returns a new GenerationParams. Raises InvalidParams for a non-mapping,
        an unknown key, a wrong type (booleans are not numbers) or a value out
        of range.
        """
        base = base if base is not None else cls()
        if data is None:
            return base
        if not isinstance(data, Mapping):
            raise InvalidParams("params must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise InvalidParams(f"unknown parameter: {', '.join(unknown)}")
        return replace(base, **dict(data))

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict (the keys ``from_dict`` takes); ``stop`` only when set."""
        data = asdict(self)
        if not self.stop:
            del data["stop"]
        return data


def _check_stop(stop: object) -> None:
    if not isinstance(stop, (list, tuple)) or not all(isinstance(item, str) and item for item in stop):
        raise InvalidParams("stop must be a list of non-empty strings")
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidParams(f"stop takes at most {MAX_STOP_STRINGS} strings")


def _check_number(name: str, value: object) -> None:
    # bool is an int subclass; "temperature": true is a client bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParams(f"{name} must be a number")
    if value != value:  # NaN compares unequal to itself and would pass every range check
        raise InvalidParams(f"{name} must be a number")
