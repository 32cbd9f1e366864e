"""The models this process can serve: the local model, and those of the OpenAI-compatible endpoints.

Endpoints come from CHAT_ENDPOINTS and from the admin (enabled `Endpoint`
rows). A thread of this process re-reads each endpoint's `GET /v1/models`
(with a short timeout of its own) once a minute, and a failed one again after
1, 2, 4 ... 60 seconds, so an endpoint that comes back is used again without a
restart; no page or turn ever waits for it. A model id listed by several
endpoints is one model with several replicas: a conversation goes to the
healthy replica its id hashes to (rendezvous hashing), so that endpoint's
prompt cache stays warm, and to the next one if that fails before its first
token (conversations.endpoints.engine).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any

import httpx2
from django.db import DatabaseError, close_old_connections

from .tokens import DEFAULT_CONTEXT, TOKENS_PER_MESSAGE, estimate

if TYPE_CHECKING:
    import openai

    from inference import Engine

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 60.0
BACKOFF_MAX_SECONDS = 60.0
DISCOVERY_TIMEOUT_SECONDS = 5.0
# How long a reply's end may wait for its prompt to be counted by the endpoint (it is asked as the reply starts).
TOKENIZE_TIMEOUT_SECONDS = 1.0
# Where engines count tokens, tried in this order: llama.cpp's llama-server, llama-cpp-python's server, vLLM.
TOKENIZE_ROUTES = (
    ("/tokenize", lambda text, model: {"content": text}),
    ("/extras/tokenize", lambda text, model: {"input": text}),
    ("/tokenize", lambda text, model: {"model": model, "prompt": text}),
)


@dataclass
class EndpointState:
    """One endpoint as this process last saw it."""

    name: str
    url: str  # its OpenAI base URL, e.g. http://127.0.0.1:8080/v1
    key: str = ""
    healthy: bool | None = None  # None: not asked yet
    models: dict[str, int | None] = field(default_factory=dict)  # model id -> the context it says, if it does
    failures: int = 0
    next_probe: float = 0.0
    error: str = ""
    tokenize: int | None = None  # index into TOKENIZE_ROUTES that works here; -1 none does

    @property
    def root(self) -> str:
        """The server's root, where llama.cpp and vLLM put /props and /tokenize."""
        return self.url.removesuffix("/v1")

    def as_dict(self) -> dict:
        return {"status": "ok" if self.healthy else "down", "models": sorted(self.models)}


class Registry:
    """What serves each model, kept fresh by a thread of this process (`start`) or by `refresh()`."""

    def __init__(
        self,
        local_engine: Engine | None = None,
        local_model: str | None = None,
        endpoints: dict[str, dict[str, str]] | None = None,
        timeout: float = 60.0,
        admin_endpoints: bool = True,
        local_ready: Callable[[], bool] | None = None,
    ) -> None:
        self.local_engine = local_engine
        self.local_model = local_model
        # Whether the local model can answer, where another process serves it (worker mode's workers).
        self._local_ready = local_ready
        self.timeout = timeout
        self._configured = dict(endpoints or {})
        self._admin_endpoints = admin_endpoints  # read Endpoint rows (off where there is no database to read)
        # The admin's context of each model (ModelOption.context_length), for endpoints that do not say theirs.
        self._admin_contexts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._endpoints: dict[str, EndpointState] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, openai.AsyncOpenAI]] = (
            weakref.WeakKeyDictionary()
        )
        self._http: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx2.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    # -- discovery ---------------------------------------------------------------

    def start(self) -> None:
        """Keep the endpoints fresh from a daemon thread until `stop()`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="endpoint-discovery", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.refresh()
            finally:
                close_old_connections()  # this thread's database connection, between passes
            due = min((s.next_probe for s in self.endpoints()), default=time.monotonic() + REFRESH_SECONDS)
            self._wake.wait(max(0.0, min(due - time.monotonic(), REFRESH_SECONDS)))
            self._wake.clear()

    def refresh(self, force: bool = False) -> None:
        """One pass: re-read which endpoints there are, and ask those that are due (all with `force`)."""
        configured = dict(self._configured)
        if self._admin_endpoints:
            configured.update(_admin_endpoints())
            self._admin_contexts = _admin_contexts()
        with self._lock:
            for name in set(self._endpoints) - set(configured):
                del self._endpoints[name]
            for name, config in configured.items():
                known = self._endpoints.get(name)
                if known is None or (known.url, known.key) != (config["url"], config["key"]):
                    self._endpoints[name] = EndpointState(name, config["url"], config["key"])
            due = [s for s in self._endpoints.values() if force or s.next_probe <= time.monotonic()]
        if due:
            # Here, on the discovery thread, rather than in engine() on the event loop of a first turn.
            import_module(".engine", __package__)
        for endpoint in due:
            self._probe(endpoint)

    def _probe(self, endpoint: EndpointState) -> None:
        headers = {"Authorization": f"Bearer {endpoint.key}"} if endpoint.key else {}
        try:
            with httpx2.Client(timeout=DISCOVERY_TIMEOUT_SECONDS, headers=headers) as http:
                listed = http.get(f"{endpoint.url}/models")
                listed.raise_for_status()
                models = {item["id"]: _context_of(item) for item in listed.json()["data"]}
                context = _props_context(http, endpoint)
        except (httpx2.HTTPError, ValueError, KeyError, TypeError) as exc:
            self._mark(endpoint, healthy=False, error=f"{type(exc).__name__}: {exc}")
            return
        with self._lock:
            # /props says the context the server runs with; a model entry may say the one it was trained for.
            endpoint.models = {model: context or ctx for model, ctx in models.items()}
        self._mark(endpoint, healthy=True)

    def _mark(self, endpoint: EndpointState, healthy: bool, error: str = "") -> None:
        with self._lock:
            if endpoint.healthy is not healthy:
                log = logger.info if healthy else logger.warning
                log("endpoint %s is %s%s", endpoint.name, "up" if healthy else "down", f": {error}" if error else "")
            endpoint.healthy, endpoint.error = healthy, error
            endpoint.failures = 0 if healthy else endpoint.failures + 1
            wait = REFRESH_SECONDS if healthy else min(2.0 ** (endpoint.failures - 1), BACKOFF_MAX_SECONDS)
            endpoint.next_probe = time.monotonic() + wait
        self._wake.set()

    def failed(self, name: str, reason: str) -> None:
        """A turn found the endpoint failing: it is down until a probe finds it up again."""
        endpoint = self._endpoints.get(name)
        if endpoint is not None:
            self._mark(endpoint, healthy=False, error=reason)

    # -- reading -------------------------------------------------------------------

    def endpoints(self) -> list[EndpointState]:
        with self._lock:
            return list(self._endpoints.values())

    def unasked(self) -> bool:
        """Whether an endpoint is known (or configured) that no pass has asked yet."""
        return not self._endpoints and bool(self._configured) or any(e.healthy is None for e in self.endpoints())

    def served(self) -> dict[str, list[str]]:
        """Every model this process knows a server of: its id -> the endpoints up for it (local: [])."""
        models: dict[str, list[str]] = {self.local_model: []} if self.local_model else {}
        for endpoint in self.endpoints():
            for model in endpoint.models:
                models.setdefault(model, [])
                if endpoint.healthy:
                    models[model].append(endpoint.name)
        return models

    def available(self, model_id: str) -> bool:
        if model_id == self.local_model:
            return self._local_ready() if self._local_ready else self.local_engine is not None
        return any(e.healthy and model_id in e.models for e in self.endpoints())

    def endpoint_of(self, model_id: str) -> str | None:
        """The endpoint a model is shown as coming from (None for the local model)."""
        if model_id == self.local_model:
            return None
        names = [e.name for e in self.endpoints() if model_id in e.models]
        return names[0] if names else None

    def context_length(self, model_id: str, configured: int | None = None) -> int:
        """The model's context: what an endpoint says, else the admin's figure, else DEFAULT_CONTEXT."""
        said = [context for e in self.endpoints() if (context := e.models.get(model_id))]
        return min(said) if said else (configured or self._admin_contexts.get(model_id) or DEFAULT_CONTEXT)

    def health(self) -> dict[str, dict]:
        return {e.name: e.as_dict() for e in self.endpoints()}

    # -- serving -------------------------------------------------------------------

    def engine(self, model_id: str) -> Engine:
        """The engine a turn on `model_id` streams from: the local one, or the model's endpoints."""
        if model_id == self.local_model and self.local_engine is not None:
            return self.local_engine
        # Imported here: the openai package costs every process 0.7 s to import (its types), and a
        # site, worker or command without endpoints never needs it. refresh() has imported it by now.
        from .engine import EndpointEngine

        return EndpointEngine(model_id, self)

    def route(self, model_id: str, affinity: str) -> list[EndpointState]:
        """The endpoints to try for a turn, in order: healthy ones first, each set in the conversation's order."""
        serving = [e for e in self.endpoints() if model_id in e.models]

        def order(endpoint: EndpointState) -> tuple[bool, bytes]:
            return (not endpoint.healthy, hashlib.sha256(f"{affinity}|{endpoint.name}".encode()).digest())

        return sorted(serving, key=order)

    def client(self, endpoint: EndpointState) -> openai.AsyncOpenAI:
        """The endpoint's client on the running event loop (a client's connections belong to one loop)."""
        clients = self._clients.setdefault(asyncio.get_running_loop(), {})
        client = clients.get(endpoint.name)
        key = endpoint.key or "none"  # the client wants one; a server without keys ignores it
        if client is None or str(client.base_url).rstrip("/") != endpoint.url or client.api_key != key:
            import openai  # only once an endpoint serves a turn (see engine())

            client = openai.AsyncOpenAI(
                base_url=endpoint.url,
                api_key=key,
                timeout=httpx2.Timeout(self.timeout),
                max_retries=0,  # a replica that fails is left for the next one, not asked again
                http_client=self.http(),
            )
            clients[endpoint.name] = client
        return client

    def http(self) -> httpx2.AsyncClient:
        """The HTTP client of every endpoint request on the running event loop: made once a loop, since
        making one builds an SSL context, 25 ms of CPU that would stall the loop at each reply."""
        loop = asyncio.get_running_loop()
        http = self._http.get(loop)
        if http is None:
            import openai  # what engine() imports: a turn on an endpoint is why this is asked

            # openai's own client's settings (pool limits, redirects) with this registry's timeout.
            http = self._http[loop] = openai.DefaultAsyncHttpxClient(timeout=httpx2.Timeout(self.timeout))
        return http

    async def prompt_tokens(self, endpoint: EndpointState, messages: list[dict]) -> int:
        """A prompt's tokens where its endpoint sends no usage: its tokenizer's count of the messages' text
        plus the template's markers, else (no route, or no answer within TOKENIZE_TIMEOUT_SECONDS) an estimate."""
        text = "\n".join(m.get("content") or "" for m in messages)
        try:
            counted = await asyncio.wait_for(self._tokens(endpoint, text), TOKENIZE_TIMEOUT_SECONDS)
        except TimeoutError:  # llama-cpp-python tokenizes behind the generation under way
            counted = estimate(text)
        return counted + TOKENS_PER_MESSAGE * len(messages)

    async def _tokens(self, endpoint: EndpointState, text: str) -> int:
        routes = range(len(TOKENIZE_ROUTES)) if endpoint.tokenize is None else [endpoint.tokenize]
        headers = {"Authorization": f"Bearer {endpoint.key}"} if endpoint.key else {}
        http = self.http()
        for index in routes:
            if index < 0:
                break
            path, body = TOKENIZE_ROUTES[index]
            try:
                answer = await http.post(
                    endpoint.root + path, json=body(text, ""), headers=headers, timeout=DISCOVERY_TIMEOUT_SECONDS
                )
                answer.raise_for_status()
                data = answer.json()
                count = data["count"] if "count" in data else len(data["tokens"])
            except (httpx2.HTTPError, ValueError, KeyError, TypeError):
                continue
            endpoint.tokenize = index
            return int(count)
        endpoint.tokenize = -1
        return estimate(text)


def _context_of(item: dict[str, Any]) -> int | None:
    """The context a `/v1/models` entry says: vLLM's max_model_len, llama.cpp's meta.n_ctx_train."""
    for value in (item.get("max_model_len"), item.get("context_length"), (item.get("meta") or {}).get("n_ctx_train")):
        if isinstance(value, int) and value > 0:
            return value
    return None


def _props_context(http: httpx2.Client, endpoint: EndpointState) -> int | None:
    """llama.cpp's llama-server says its context (n_ctx) in /props; other servers have no such route."""
    try:
        answer = http.get(f"{endpoint.root}/props")
        answer.raise_for_status()
        props = answer.json()
    except (httpx2.HTTPError, ValueError):
        return None
    value = props.get("n_ctx") or (props.get("default_generation_settings") or {}).get("n_ctx")
    return value if isinstance(value, int) and value > 0 else None


def _admin_contexts() -> dict[str, int]:
    from ..models import ModelOption

    try:
        return dict(ModelOption.objects.filter(context_length__isnull=False).values_list("model_id", "context_length"))
    except DatabaseError as exc:
        logger.warning("cannot read the admin's model contexts: %s", exc)
        return {}


def _admin_endpoints() -> dict[str, dict[str, str]]:
    from ..models import Endpoint

    try:
        rows = Endpoint.objects.filter(enabled=True).values_list("name", "url", "api_key")
        return {name: {"url": url.rstrip("/"), "key": key} for name, url, key in rows}
    except DatabaseError as exc:  # no table yet (before migrate), or the database is down
        logger.warning("cannot read the admin's endpoints: %s", exc)
        return {}
