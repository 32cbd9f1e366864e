"""Building this process's live state (conversations.live.state) from the settings, and its health.

A web process builds it in chatsite.asgi (`start_web_process`: recover the
database, load the model, install the state); the commands that generate
build it with `ready()`. The runner is picked from the registry in
conversations.live.runners. The inference app takes a config object and
knows nothing of Django; `engine_config()` is the bridge.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from django.conf import settings

from inference import InferenceError, model_name

from ..endpoints.registry import Registry
from . import runners, state, sweep
from .state import Live

if TYPE_CHECKING:
    from inference import Engine, EngineConfig

logger = logging.getLogger(__name__)

# What a bad CHAT_MODEL / CHAT_DEVICE / CHAT_DTYPE raises while loading.
LOAD_ERRORS = (InferenceError, ValueError, OSError)


def build(load_engine: bool = True) -> Live:
    """The state CHAT_INFERENCE asks for; in local mode with its engine loaded when `load_engine`."""
    engine = load_model() if settings.CHAT_INFERENCE == "local" and load_engine else None
    return Live(runner=runners.build(settings.CHAT_INFERENCE, registry(engine)))


def registry(engine: Engine | None = None) -> Registry:
    """The models of this process: the local one (none with CHAT_INFERENCE=none) and CHAT_ENDPOINTS'."""
    local = None if settings.CHAT_INFERENCE == "none" else model_name(settings.CHAT_MODEL)
    return Registry(
        local_engine=engine,
        local_model=engine.info.model_name if engine is not None else local,
        endpoints=settings.CHAT_ENDPOINTS,
        timeout=settings.CHAT_ENDPOINT_TIMEOUT,
        local_ready=_workers_seen if settings.CHAT_INFERENCE == "worker" and engine is None else None,
    )


def _workers_seen() -> bool:
    from ..models import InferenceWorker

    return InferenceWorker.seen_since(settings.CHAT_WORKER_TIMEOUT).exists()


def ready() -> Live:
    """This process's state, ready to generate: in local mode its engine is loaded first.

    Raises one of LOAD_ERRORS when the model cannot be loaded.
    """
    try:
        live = state.current()
    except state.NotStarted:
        live = None
    if live is None or (settings.CHAT_INFERENCE == "local" and live.engine is None):
        live = build()
        state.install(live)
        live.models.refresh()  # a command starts its work at once: its endpoints are asked first
        live.models.start()
    return live


def load_model() -> Engine:
    """The engine the settings describe, loaded now (minutes the first time, seconds from the cache)."""
    from inference import load_engine

    return load_engine(engine_config())


def engine_config() -> EngineConfig:
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


def start_web_process() -> Live:
    """Start-up of a web process: recover the database, then build the state (and load the model).

    A bad model setting ends the process with one line naming CHAT_MODEL,
    CHAT_DEVICE or CHAT_DTYPE rather than a traceback; in worker mode (no
    model here) so does a REDIS_URL that does not answer.
    """
    from ..models import Message

    if settings.CHAT_INFERENCE == "worker":
        # Streaming replies belong to live workers of other processes; a
        # dead one's are ended by a reaper (conversations.live.leases).
        problem = redis_problem()
        if problem:
            raise SystemExit(f"chatsite: {problem}")
    else:
        # Local mode: this process is the only one generating, so anything
        # still streaming was left by its previous run.
        interrupted = Message.interrupt_streaming()
        if interrupted:
            logger.warning("marked %d reply(s) left streaming by the last run as interrupted", interrupted)
    try:
        live = build()
    except LOAD_ERRORS as exc:
        raise SystemExit(f"chatsite: cannot load CHAT_MODEL={settings.CHAT_MODEL!r}: {exc}") from None
    state.install(live)
    live.models.start()
    sweep.start()
    return live


def health() -> dict:
    """What /healthz answers; `status` is "ok" when replies can be generated.

    With CHAT_INFERENCE=none the site is ok once its endpoints have been
    asked for their models (the discovery thread's first pass, at start-up):
    before that it has no model to offer, and a new chat would be refused.
    Their states are listed; one being down is not the site's.
    """
    models = state.current().models
    return _local_health(models) | {"endpoints": models.health()}


def _local_health(models: Registry) -> dict:
    if settings.CHAT_INFERENCE == "worker":
        return _worker_health()
    if settings.CHAT_INFERENCE == "none":
        if models.unasked():
            return {"status": "starting", "mode": "none", "reason": "asking the endpoints for their models"}
        return {"status": "ok", "mode": "none"}
    engine = models.local_engine
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
    from ..models import InferenceWorker

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
