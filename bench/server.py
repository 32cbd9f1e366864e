"""A real Chatsite server for the benchmark: daphne in a child process.

``Server`` migrates a throwaway SQLite database, starts
``python -m daphne -b 127.0.0.1 -p PORT chatsite.asgi:application`` from the
repository root, times process start to the first ``/healthz`` that says ok,
samples the process's resident memory in a thread (the peak is what the
report shows), and always stops the process (SIGINT, then SIGKILL).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests


# Settings that would change what is measured: the benchmark runs the defaults,
# plus what server_env sets (and records).
def _cleared(key: str) -> bool:
    return key.startswith("CHAT_") or key in ("REDIS_URL", "DATABASE_URL", "DJANGO_DEBUG")


class ServerFailed(RuntimeError):
    """The server exited or never became healthy; the message ends with its log's tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(
    database_url: str, model_cache: Path, max_batch: int, dtype: str = "auto", quant: str = "auto"
) -> dict[str, str]:
    """The environment of the server and of manage.py commands: defaults plus the given settings."""
    env = {key: value for key, value in os.environ.items() if not _cleared(key)}
    env.update(server_settings(database_url, model_cache, max_batch, dtype, quant))
    return env


def server_settings(
    database_url: str, model_cache: Path, max_batch: int, dtype: str = "auto", quant: str = "auto"
) -> dict[str, str]:
    """The only settings the benchmark gives the server (everything else is Chatsite's default)."""
    settings = {
        "DATABASE_URL": database_url,
        "CHAT_MODEL_CACHE": str(model_cache),
        "CHAT_MAX_BATCH": str(max_batch),
        "PYTHONUNBUFFERED": "1",
        # The benchmarks time replies: a title asked after each new chat's first reply would run beside the
        # next turn (on an endpoint, ahead of the direct client's request). bench/titles.py measures titles.
        "CHAT_TITLES": "0",
    }
    if dtype != "auto":
        settings["CHAT_DTYPE"] = dtype
    if quant != "auto":
        settings["CHAT_QUANT"] = quant
    return settings


def migrate(repo: Path, env: dict[str, str]) -> float:
    """``manage.py migrate`` on the throwaway database; returns seconds. Raises ServerFailed."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"], cwd=repo, env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise ServerFailed(f"manage.py migrate failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.monotonic() - started


class Server:
    """One daphne process. Use as a context manager so it is always stopped."""

    def __init__(self, repo: Path, env: dict[str, str], log_path: Path, port: int | None = None) -> None:
        self.repo = repo
        self.env = env
        self.log_path = log_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.health: dict = {}
        self.peak_rss = 0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    # -- start and stop ----------------------------------------------------------

    def start(self, timeout: float = 600.0) -> float:
        """Start daphne and wait for ``/healthz`` ok; returns seconds since the process started.

        Raises ServerFailed if the process exits or the timeout passes.
        """
        self._log = open(self.log_path, "w")
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "chatsite.asgi:application"],
            cwd=self.repo,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C on the harness must not reach it before we stop it
        )
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()
        session = requests.Session()
        session.trust_env = False  # never through a proxy
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise ServerFailed(f"the server exited with status {self.process.returncode}:\n{self.log_tail()}")
            try:
                response = session.get(self.url + "/healthz", timeout=2)
                if response.status_code == 200 and response.json().get("status") == "ok":
                    self.health = response.json()
                    return time.monotonic() - started
            except (requests.ConnectionError, requests.Timeout, ValueError):
                pass
            time.sleep(0.05)
        raise ServerFailed(f"no /healthz ok within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server: SIGINT (daphne shuts down cleanly), SIGKILL after 15 s."""
        self._sampling.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._sampler is not None:
            self._sampler.join(2)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- memory -------------------------------------------------------------------

    def rss(self) -> int:
        """Resident bytes of the server process now (0 once it is gone)."""
        try:
            return psutil.Process(self.process.pid).memory_info().rss
        except (psutil.Error, AttributeError):
            return 0

    def reset_peak(self) -> None:
        self.peak_rss = self.rss()

    def _sample_rss(self) -> None:
        # Every 100 ms: short enough to catch the peak of a prefill burst.
        while not self._sampling.wait(0.1):
            self.peak_rss = max(self.peak_rss, self.rss())

    # -- diagnostics --------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
