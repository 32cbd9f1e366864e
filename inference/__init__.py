"""Chatsite's local language model: loading, prompts, generation, streaming, batching.

Knows nothing of HTTP, WebSockets, the database or Django settings; it takes
an :class:`EngineConfig`. See docs/inference.md.

The names that need torch and transformers (the engine, loading) are imported
on first use, so ``from inference import GenerationParams`` stays cheap for
code that only validates parameters.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .base import Engine, EngineInfo
from .config import DEFAULT_MODEL, EngineConfig, model_name
from .errors import (
    EngineClosed,
    InferenceError,
    InvalidConfig,
    InvalidParams,
    ModelLoadError,
    ModelUnavailable,
    PromptTooLong,
    QueueFull,
)
from .params import GenerationParams
from .streaming import Chunk, Event, Finished, Queued, Request, Result, Started

if TYPE_CHECKING:
    from .engine import TransformersEngine, build_engine, load_engine
    from .stats import EngineStats

_LAZY = {
    "TransformersEngine": "engine",
    "build_engine": "engine",
    "load_engine": "engine",
    "EngineStats": "stats",
}

__all__ = [
    "DEFAULT_MODEL",
    "Chunk",
    "Engine",
    "EngineClosed",
    "EngineConfig",
    "EngineInfo",
    "EngineStats",
    "Event",
    "Finished",
    "GenerationParams",
    "InferenceError",
    "InvalidConfig",
    "InvalidParams",
    "ModelLoadError",
    "ModelUnavailable",
    "PromptTooLong",
    "Queued",
    "QueueFull",
    "Request",
    "Result",
    "Started",
    "TransformersEngine",
    "build_engine",
    "load_engine",
    "model_name",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
