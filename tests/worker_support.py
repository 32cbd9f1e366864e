"""Worker mode for real (CHAT_INFERENCE=worker): PostgreSQL, Redis, daphne and inference workers as processes.

    @pytest.fixture(scope="module")
    def site(tiny_model_dir, site_servers):
        with worker_site(tiny_model_dir, site_servers, "chatsite-x-", CHAT_MAX_BATCH=1) as site:
            worker = site.start_worker("w1")
            web = site.start_web()
            site.wait_for_workers(1)
            yield site  # every process started is stopped when the block ends

The session has one PostgreSQL and one Redis for its sites (`site_servers`,
a fixture of this plugin): PostgreSQL comes from DATABASE_URL when that
points at one (the server pass of .ci/run, `make test-redis`), else it is a
throwaway one from scripts.services; Redis is always a throwaway one of the
pytest process's own. A database migrated once
is the template of each site's own (CREATE DATABASE ... TEMPLATE), and each
site has a Redis database number of its own; every process of a site shares
them and the settings given.
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
from itertools import count
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import requests

from scripts.services import postgres_server, redis_server
from tests.live_server import ServerError, ServerHandle, migrate_database, server_env, spawn, start_daphne

START_TIMEOUT = 120.0


class WorkerProcess:
    """`manage.py inference_worker` in its own process, logging to a file."""

    def __init__(self, name: str, env: dict, folder: Path) -> None:
        self.name = name
        self.log_path = folder / f"{name}.log"
        self.process, self.output = spawn(["manage.py", "inference_worker", "--name", name], env, self.log_path)

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
    """Until the web process at base_url sees `count` workers (each reports itself a moment after it is ready)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        health = requests.get(f"{base_url}/healthz", timeout=5).json()
        if health.get("workers", 0) >= count:
            return
        time.sleep(0.05)  # the report is a database row written by another process; nothing to await
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
            for worker in self.workers:
                if worker.process.poll() is None:
                    assert worker.output.wait_for(" ready: ", START_TIMEOUT), worker.log()[-3000:]
            wait_for_workers(self.webs[0].url, count)
        except TimeoutError:
            self.print_worker_logs()
            raise

    def print_worker_logs(self) -> None:
        for worker in self.workers:
            sys.stderr.write(f"--- {worker.name} ---\n{worker.log()[-3000:]}\n")

    def stop(self) -> None:
        """SIGTERM to every process at once, then each one waited for: in turn, their exits cost a module 3 s.

        Nothing is live by then; a second SIGTERM from each stop() changes nothing.
        """
        for process in [server.process for server in self.webs] + [worker.process for worker in self.workers]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for server in reversed(self.webs):
            server.stop()
        for worker in self.workers:
            worker.stop()


class SiteServers:
    """One PostgreSQL and one Redis, carved into a fresh database of each per site."""

    def __init__(self, postgres_url: str, redis_url: str) -> None:
        self.postgres_url = postgres_url
        self.redis_url = redis_url
        self._numbers = count(1)  # Redis has databases 0-15; the session's sites are fewer
        # A name of this process's own: the pytest processes of a pass share one PostgreSQL.
        self.template = f"chatsite_site_template_{os.getpid()}"
        self._template_ready = False

    def new_site(self, folder: Path) -> tuple[str, str]:
        """A migrated database of its own (its URL) and a Redis database of its own (its URL)."""
        number = next(self._numbers)
        if not self._template_ready:
            template_url = self._database_url(self.template)
            self._create(self.template)
            migrate_database(server_env(folder, {"DATABASE_URL": template_url}), folder / "migrate.log")
            self._template_ready = True
        name = f"chatsite_site_{os.getpid()}_{number}"
        self._create(name, template=self.template)
        redis = urlsplit(self.redis_url)
        return self._database_url(name), urlunsplit(redis._replace(path=f"/{number}"))

    def _database_url(self, name: str) -> str:
        return urlunsplit(urlsplit(self.postgres_url)._replace(path=f"/{name}"))

    def _create(self, name: str, template: str | None = None) -> None:
        with psycopg.connect(self._database_url("postgres"), autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}"')
            db.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))


@pytest.fixture(scope="session")
def site_servers() -> Iterator[SiteServers]:
    """The PostgreSQL and Redis the session's worker sites share (each with databases of its own)."""
    with ExitStack() as stack:
        database_url = os.getenv("DATABASE_URL", "")
        if not database_url.startswith("postgres"):
            database_url = stack.enter_context(postgres_server())
        # A Redis of this process's own (it starts in milliseconds), even in the server pass: some
        # tests watch it with MONITOR, which sees every client of a server, and its 16 database
        # numbers could not be shared out among the pass's pytest processes.
        yield SiteServers(database_url, stack.enter_context(redis_server()))


@contextmanager
def worker_site(model_dir: Path, servers: SiteServers, prefix: str, **settings) -> Iterator[WorkerSite]:
    """Processes for worker mode with the tiny model on databases of their own; settings add to the site's."""
    with tempfile.TemporaryDirectory(prefix=prefix) as folder_name:
        folder = Path(folder_name)
        database_url, redis_url = servers.new_site(folder)
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
        try:
            yield site
        finally:
            site.stop()
