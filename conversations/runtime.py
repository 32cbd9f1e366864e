"""The one inference engine of this process, built from Django settings.

The inference app takes a config object and knows nothing of Django; this
module is the bridge. The engine is loaded once, when the ASGI application
starts (not on migrate or other commands), and shared by every consumer.
"""

from __future__ import annotations

import logging
import threading

from django.conf import settings

from inference import InferenceError

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_engine = None
# What a bad CHAT_MODEL / CHAT_DEVICE / CHAT_DTYPE raises while loading.
LOAD_ERRORS = (InferenceError, ValueError, OSError)


def engine_config():
    from inference import EngineConfig

    return EngineConfig(
        model=settings.CHAT_MODEL,
        device=settings.CHAT_DEVICE,
        dtype=settings.CHAT_DTYPE,
        quant=settings.CHAT_QUANT,
        cache_dir=settings.CHAT_MODEL_CACHE,
        max_batch_size=settings.CHAT_MAX_BATCH,
        max_queue=settings.CHAT_MAX_QUEUE,
        num_threads=settings.CHAT_THREADS,
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


def close_engine(timeout: float) -> None:
    """Close the engine if loaded: its jobs end, its scheduler thread is joined."""
    engine = _engine
    if engine is None:
        return
    engine.close(timeout=timeout)


def model_name() -> str:
    engine = _engine
    return engine.info.model_name if engine is not None else settings.CHAT_MODEL


def redis_problem() -> str | None:
    """One line saying why REDIS_URL cannot be reached, or None when it answers."""
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        return f"cannot reach REDIS_URL={settings.REDIS_URL!r}: {exc}"
    finally:
        client.close()
    return None


def health() -> dict:
    """What /healthz answers; `status` is "ok" when replies can be generated."""
    if settings.CHAT_INFERENCE == "worker":
        return _worker_health()
    engine = _engine
    if engine is None:
        return {"status": "loading", "mode": settings.CHAT_INFERENCE, "model": settings.CHAT_MODEL}
    return {
        "status": "ok",
        "mode": settings.CHAT_INFERENCE,
        "model": engine.info.model_name,
        "device": engine.info.device,
        "dtype": engine.info.dtype,
        "quant": engine.info.quant,
    }


def _worker_health() -> dict:
    from .models import InferenceWorker

    seconds = settings.CHAT_WORKER_TIMEOUT
    workers = list(InferenceWorker.seen_since(seconds))
    if not workers:
        return {
            "status": "unavailable",
            "mode": "worker",
            "model": settings.CHAT_MODEL,
            "reason": f"no inference worker seen in the last {seconds:.0f} s",
        }
    first = workers[0]
    return {
        "status": "ok",
        "mode": "worker",
        "model": first.model_name,
        "device": first.device,
        "dtype": first.dtype,
        "workers": len(workers),
        "active_replies": sum(worker.active_replies for worker in workers),
    }


def start_server() -> None:
    """Start-up of a web process: recover the database, then load the model.

    A bad model setting ends the process with one line naming CHAT_MODEL,
    CHAT_DEVICE or CHAT_DTYPE rather than a traceback; in worker mode (no
    model here) so does a REDIS_URL that does not answer.
    """
    from .models import Message

    if settings.CHAT_INFERENCE == "worker":
        # Streaming replies belong to live workers of other processes; a
        # dead one's are ended by a reaper (conversations.runners.worker).
        problem = redis_problem()
        if problem:
            raise SystemExit(f"chatsite: {problem}")
        return
    # Local mode: this process is the only one generating, so anything still
    # streaming was left by its previous run.
    interrupted = Message.interrupt_streaming()
    if interrupted:
        logger.warning("marked %d reply(s) left streaming by the last run as interrupted", interrupted)
    try:
        get_engine()
    except LOAD_ERRORS as exc:
        raise SystemExit(f"chatsite: cannot load CHAT_MODEL={settings.CHAT_MODEL!r}: {exc}") from None
