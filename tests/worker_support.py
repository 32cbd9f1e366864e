"""Worker mode for real (CHAT_INFERENCE=worker): PostgreSQL, Redis, daphne and inference workers as processes.

    with worker_site(tiny_model_dir, "chatsite-x-", CHAT_MAX_BATCH=1) as site:
        worker = site.start_worker("w1")
        web = site.start_web()
        site.wait_for_workers(1)
        ...  # every process started is stopped when the block ends

The servers come from DATABASE_URL / REDIS_URL when they point at
PostgreSQL / Redis (the Redis pass of .ci/run, `make test-redis`), else
throwaway ones from scripts.services. The database is migrated once; every
process of the site shares it, the Redis and the settings given.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

from scripts.services import postgres_server, redis_server
from tests.live_server import ServerError, ServerHandle, migrate_database, server_env, spawn, start_daphne

START_TIMEOUT = 120.0


class WorkerProcess:
    """`manage.py inference_worker` in its own process, logging to a file."""

    def __init__(self, name: str, env: dict, folder: Path) -> None:
        self.name = name
        self.log_path = folder / f"{name}.log"
        with open(self.log_path, "wb") as log:
            self.process = spawn(["manage.py", "inference_worker", "--name", name], env, log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def wait_for_workers(base_url: str, count: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        health = requests.get(f"{base_url}/healthz", timeout=5).json()
        if health.get("workers", 0) >= count:
            return
        time.sleep(0.2)  # waiting for other processes to start; nothing to await
    raise TimeoutError(f"{count} workers not seen: {health}")


@dataclass
class WorkerSite:
    shared: dict  # the settings of every process (start_daphne's env_overrides)
    env: dict  # a worker's whole environment
    folder: Path
    redis_url: str
    workers: list[WorkerProcess] = field(default_factory=list)  # every one started, dead or alive
    webs: list[ServerHandle] = field(default_factory=list)

    def start_worker(self, name: str) -> WorkerProcess:
        worker = WorkerProcess(name, self.env, self.folder)
        self.workers.append(worker)
        return worker

    def start_web(self, **settings) -> ServerHandle:
        """One more daphne on the site (settings override the site's for it alone)."""
        try:
            server = start_daphne(dict(self.shared, **settings), migrate=False, health_timeout=START_TIMEOUT)
        except ServerError:
            self.print_worker_logs()
            raise
        self.webs.append(server)
        return server

    def wait_for_workers(self, count: int) -> None:
        """Until the first web process sees `count` workers; their logs are printed if it does not."""
        try:
            wait_for_workers(self.webs[0].url, count)
        except TimeoutError:
            self.print_worker_logs()
            raise

    def print_worker_logs(self) -> None:
        for worker in self.workers:
            sys.stderr.write(f"--- {worker.name} ---\n{worker.log()[-3000:]}\n")

    def stop(self) -> None:
        for server in reversed(self.webs):
            server.stop()
        for worker in self.workers:
            worker.stop()


@contextmanager
def worker_site(model_dir: Path, prefix: str, **settings) -> Iterator[WorkerSite]:
    """A migrated PostgreSQL and a Redis for worker mode with the tiny model; settings add to the site's."""
    with ExitStack() as stack:
        database_url = os.getenv("DATABASE_URL", "")
        if not database_url.startswith("postgres"):
            database_url = stack.enter_context(postgres_server())
        redis_url = os.getenv("REDIS_URL") or stack.enter_context(redis_server())
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
        shared = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "CHAT_INFERENCE": "worker",
            "CHAT_MODEL": str(model_dir),
            "CHAT_DEVICE": "cpu",
            "CHAT_SAVE_INTERVAL_MS": 0,
            **settings,
        }
        site = WorkerSite(shared, server_env(folder, shared), folder, redis_url)
        migrate_database(site.env, folder / "migrate.log")
        try:
            yield site
        finally:
            site.stop()
