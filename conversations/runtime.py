"""The one inference engine of this process, built from Django settings.

The inference app takes a config object and knows nothing of Django; this
module is the bridge. The engine is loaded once, when the ASGI application
starts (not on migrate or other commands), and shared by every consumer.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_engine = None


def engine_config():
    from inference import EngineConfig

    return EngineConfig(
        model=settings.CHAT_MODEL,
        device=settings.CHAT_DEVICE,
        dtype=settings.CHAT_DTYPE,
        cache_dir=settings.CHAT_MODEL_CACHE,
        max_batch_size=settings.CHAT_MAX_BATCH,
        max_queue=settings.CHAT_MAX_QUEUE,
    )


def get_engine():
    """The loaded engine, loading it on first use (start-up loads it eagerly)."""
    global _engine
    with _lock:
        if _engine is None:
            from inference import load_engine

            _engine = load_engine(engine_config())
        return _engine


def set_engine(engine) -> None:
    """Use an already-built engine (tests build one on a tiny model)."""
    global _engine
    with _lock:
        _engine = engine


def loaded_engine():
    """The engine if it is loaded, else None; never loads it."""
    return _engine


def model_name() -> str:
    engine = _engine
    return engine.info.model_name if engine is not None else settings.CHAT_MODEL


def health() -> dict:
    engine = _engine
    if engine is None:
        return {"status": "loading", "mode": settings.CHAT_INFERENCE, "model": settings.CHAT_MODEL}
    return {
        "status": "ok",
        "mode": settings.CHAT_INFERENCE,
        "model": engine.info.model_name,
        "device": engine.info.device,
        "dtype": engine.info.dtype,
    }


def start_server() -> None:
    """Start-up of a web process: recover the database, then load the model.

    A bad model setting ends the process with one line naming CHAT_MODEL,
    CHAT_DEVICE or CHAT_DTYPE rather than a traceback.
    """
    from inference import InferenceError

    from .models import Message

    interrupted = Message.interrupt_streaming()
    if interrupted:
        logger.warning("marked %d reply(s) left streaming by the last run as interrupted", interrupted)
    if settings.CHAT_INFERENCE == "local":
        try:
            get_engine()
        except (InferenceError, ValueError, OSError) as exc:
            raise SystemExit(f"chatsite: cannot load CHAT_MODEL={settings.CHAT_MODEL!r}: {exc}") from None
