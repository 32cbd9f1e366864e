"""llama.cpp's server for the endpoint tests (pytest plugin: ``tests.endpoint_support``).

A real `python -m llama_cpp.server` (from `llama-cpp-python[server]`) on the
packaged SmolLM2 GGUF, on a free loopback port, serving the model as
``smollm2``:

    def test_it(llama_server):            # the session's server
        llama_server.url                  # its OpenAI base URL, http://127.0.0.1:PORT/v1

    def test_faults(llama_factory):       # servers of the test's own, to kill or hold still
        server = llama_factory()
        server.process.send_signal(signal.SIGSTOP)

A server is ready once it answers `GET /v1/models` (uvicorn logs that it runs
before the model is loaded, so its log is no signal here).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.live_server import ProcessLog, free_port, server_env, spawn

MODEL_ALIAS = "smollm2"
START_TIMEOUT = 120.0


@dataclass
class LlamaServer:
    port: int
    process: subprocess.Popen
    output: ProcessLog
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        """The CPU time the server process has used so far (user + system)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Stop the server and remove its folder (its log)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a server held still must be able to exit
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        shutil.rmtree(self.log_path.parent, ignore_errors=True)


def gguf_path() -> Path:
    from inference.config import DEFAULT_MODEL
    from inference.loading import packaged_gguf

    return packaged_gguf(DEFAULT_MODEL)


def start_llama(port: int | None = None, alias: str = MODEL_ALIAS) -> LlamaServer:
    """A llama.cpp server on `port` (a free one by default), waited for until it lists its model."""
    port = port or free_port()
    folder = Path(tempfile.mkdtemp(prefix="chatsite-llama-"))
    args = ["-m", "llama_cpp.server", "--model", str(gguf_path()), "--model_alias", alias]
    args += ["--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "2048"]
    # By default it cuts a running reply off when another request comes (docs/models.md): queue them instead.
    args += ["--interrupt_requests", "False"]
    process, output = spawn(args, server_env(folder), folder / "llama.log")
    server = LlamaServer(port, process, output, folder / "llama.log")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{server.url}/models", timeout=5).ok:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)  # the model loads in another process; it says nothing we can wait on
    log = server.log()
    server.stop()
    raise RuntimeError(f"llama.cpp's server did not start:\n{log[-3000:]}")


@pytest.fixture(scope="session")
def llama_server() -> Iterator[LlamaServer]:
    """One llama.cpp server for the session (tests that break a server use llama_factory)."""
    server = start_llama()
    yield server
    server.stop()


@pytest.fixture
def llama_factory() -> Iterator:
    """start_llama for one test: every server it started is stopped when the test ends."""
    servers: list[LlamaServer] = []

    def start(port: int | None = None, alias: str = MODEL_ALIAS) -> LlamaServer:
        server = start_llama(port, alias)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
