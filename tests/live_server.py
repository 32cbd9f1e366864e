"""Real daphne servers for end-to-end tests (pytest plugin: ``tests.live_server``).

    def test_it_serves(daphne_server):          # the session's server, on the tiny model
        urllib.request.urlopen(daphne_server.url + "/healthz")

    def test_the_real_model(real_daphne_server):  # the session's server on the real default model
        ...

    def test_two_web_processes(daphne_factory):   # or call start_daphne() directly
        shared = {"DATABASE_URL": postgres_url, "REDIS_URL": redis_url}
        a = daphne_factory(shared)
        b = daphne_factory(shared, migrate=False)   # the first one migrated
        ...  # a.url, b.port, a.log_path, a.log(); stopped when the test ends

Each server is ``python -m daphne`` on a free loopback port, started from the
repository root, by default with the real default model (converted once into
``var/models``, so later starts are fast). It gets a fresh temporary folder
holding its log and, unless ``DATABASE_URL`` is given, a fresh SQLite database:
a copy of one migrated once per test run (``migrate`` costs a second and more
of every server's start). Nothing of the developer's own environment leaks
in: DATABASE_URL, REDIS_URL, CHAT_* and CHATSITE_* are dropped unless passed
explicitly.

``start_daphne`` works outside pytest too (it is a plain function); the
fixtures only make sure every server started is stopped at the end, and the
report of a failing test that used them carries each server's log tail.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The first start converts the model into the cache; later ones only load it.
HEALTH_TIMEOUT = 180.0
MIGRATE_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
START_ATTEMPTS = 3  # a free port can be taken by someone else before daphne binds it
# Every server of a test run signs cookies with the same key, so a session
# made on one process is valid on the others (scale-out tests need that).
TEST_SECRET_KEY = "chatsite-live-server-tests-only-not-a-secret"
STRIPPED_PREFIXES = ("CHAT_", "CHATSITE_")
STRIPPED_NAMES = (
    "DATABASE_URL",
    "REDIS_URL",
    "DJANGO_SECRET_KEY",
    "DJANGO_DEBUG",
    "DJANGO_ALLOWED_HOSTS",
    "DJANGO_CSRF_TRUSTED_ORIGINS",
)


class ServerError(RuntimeError):
    """A server did not start or become healthy; the message includes its log."""


class ProcessLog:
    """A child process's output, appended to its log file line by line as it comes.

    A thread copies the output; whoever waits for a line (`wait_for`) is woken
    by the line itself, so tests wait on what a process says, not on time.
    """

    def __init__(self, process: subprocess.Popen, path: Path) -> None:
        self.path = path
        self._seen = ""
        self._ended = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._copy, args=(process.stdout,), daemon=True)
        self._thread.start()

    def _copy(self, output) -> None:
        with output, open(self.path, "ab") as log:
            for line in output:
                log.write(line)
                log.flush()
                with self._changed:
                    self._seen += line.decode(errors="replace")
                    self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        """Whether the process says `text` within `timeout` seconds (False at once if its output ended)."""
        with self._changed:
            return self._changed.wait_for(lambda: text in self._seen or self._ended, timeout) and text in self._seen


@dataclass
class ServerHandle:
    """One running daphne process. Stop it with ``stop()`` or a ``with`` block."""

    port: int
    process: subprocess.Popen
    output: ProcessLog
    workdir: Path
    log_path: Path
    env: dict = field(repr=False)
    keep_workdir: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def log(self) -> str:
        """Everything the process (and its migrate) wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        """Until the server logs `text`; AssertionError (with the log's tail) if it does not in time."""
        assert self.output.wait_for(text, timeout), f"{text!r} not logged:\n{_tail(self.log())}"

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; removes the temporary folder.

        Returns the exit status. Safe to call twice.
        """
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# Loaded here, in the parent: the child between fork and exec only calls it.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
PR_SET_PDEATHSIG = 1


def die_with_test_run() -> None:
    """Popen's preexec_fn: the child is sent SIGTERM when the test process dies.

    A test run killed from outside (a timeout, a second Ctrl-C) skips its
    teardown; without this its servers and workers run on as orphans,
    holding memory and the cores that the next run needs.
    """
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(args: list[str], env: dict, log_path: Path) -> tuple[subprocess.Popen, ProcessLog]:
    """`python ARGS` from the repository root, its output appended to `log_path` as it comes."""
    process = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        # Its own process group: a Ctrl-C meant for pytest reaches pytest,
        # which then stops the process in an orderly way.
        start_new_session=True,
        preexec_fn=die_with_test_run,
    )
    return process, ProcessLog(process, log_path)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(workdir: Path, env_overrides: dict | None = None) -> dict:
    """The environment of a server process: ours, minus Chatsite's settings, plus the overrides.

    Its settings are tests/server_settings.py: the site's own, with a fast password hasher.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in STRIPPED_NAMES and not name.startswith(STRIPPED_PREFIXES)
    }
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.server_settings",
            "DJANGO_SECRET_KEY": TEST_SECRET_KEY,
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "CHAT_MODEL_CACHE": str(REPO / "var" / "models"),
            # A title asked of the model after each chat's first reply would run beside every other test's
            # replies (and their queue places); the tests of titles turn it on (tests/live/test_titles.py).
            "CHAT_TITLES": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({name: str(value) for name, value in (env_overrides or {}).items()})
    return env


def _tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


_template: dict[str, Path] = {}  # the migrated SQLite database of this process, made once


def fresh_sqlite_database(target: Path, log_path: Path) -> None:
    """A migrated, empty SQLite database at `target`: a copy of this process's template.

    The template is migrated on first use (``manage.py migrate`` into a
    temporary folder removed at exit) and copied for every later server.
    """
    if "path" not in _template:
        folder = Path(tempfile.mkdtemp(prefix="chatsite-template-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = folder / "db.sqlite3"
        migrate_database(server_env(folder), log_path)
        _template["path"] = template
    shutil.copyfile(_template["path"], target)


def migrate_database(env: dict, log_path: Path) -> None:
    """`manage.py migrate` with this environment, logging to log_path; ServerError (with the log) if it fails."""
    with open(log_path, "ab") as log:
        log.write(b"$ python manage.py migrate --noinput\n")
        log.flush()
        try:
            result = subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput"],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise ServerError(
                f"migrate took over {MIGRATE_TIMEOUT:.0f} s:\n{_tail(log_path.read_text(errors='replace'))}"
            ) from None
    if result.returncode != 0:
        raise ServerError(f"migrate failed (exit {result.returncode}):\n{_tail(log_path.read_text(errors='replace'))}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_healthy(server: ServerHandle, timeout: float = HEALTH_TIMEOUT) -> None:
    """Until /healthz answers 200; raise ServerError (with the log) otherwise.

    daphne loads the application (and with it the model) before it listens,
    so its "Listening" line is the event to wait for; in worker mode /healthz
    then waits for a worker (another process), which is polled.
    """
    deadline = time.monotonic() + timeout
    listening = server.output.wait_for("Listening on TCP address", timeout)
    while listening and server.alive() and time.monotonic() < deadline:
        if _healthy(server.url):
            return
        time.sleep(0.05)  # a worker of another process has yet to report; nothing to await here
    if not server.alive():
        raise ServerError(
            f"daphne exited with status {server.process.wait()} before it was healthy:\n{_tail(server.log())}"
        )
    raise ServerError(f"{server.url}/healthz not 200 within {timeout:.0f} s:\n{_tail(server.log())}")


def start_daphne(
    env_overrides: dict | None = None,
    *,
    migrate: bool = True,
    health_timeout: float = HEALTH_TIMEOUT,
    wait: bool = True,
    keep_workdir: bool = False,
) -> ServerHandle:
    """Start one daphne process serving chatsite.asgi:application and wait until it is healthy.

    env_overrides: environment variables for this server (DATABASE_URL,
    REDIS_URL, CHAT_INFERENCE, ...). Without DATABASE_URL it gets a fresh
    SQLite database in its temporary folder. migrate: run ``manage.py
    migrate`` first (turn off for a second process on a shared, already
    migrated database). wait: wait for /healthz to answer 200.

    Returns a running ServerHandle; raises ServerError (with the log's tail)
    if it cannot start, and then leaves no process behind.
    """
    workdir = Path(tempfile.mkdtemp(prefix="chatsite-daphne-"))
    log_path = workdir / "server.log"
    env = server_env(workdir, env_overrides)
    try:
        if migrate and "DATABASE_URL" not in (env_overrides or {}):
            fresh_sqlite_database(workdir / "db.sqlite3", log_path)
        elif migrate:
            migrate_database(env, log_path)
        last_error: ServerError | None = None
        for _attempt in range(START_ATTEMPTS):
            port = free_port()
            with open(log_path, "ab") as log:
                log.write(f"$ python -m daphne -b 127.0.0.1 -p {port} chatsite.asgi:application\n".encode())
            process, output = spawn(
                ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatsite.asgi:application"], env, log_path
            )
            server = ServerHandle(
                port=port,
                process=process,
                output=output,
                workdir=workdir,
                log_path=log_path,
                env=env,
                keep_workdir=True,
            )
            if not wait:
                server.keep_workdir = keep_workdir
                return server
            try:
                wait_healthy(server, health_timeout)
            except ServerError as exc:
                server.stop()
                last_error = exc
                if "Address already in use" in server.log():
                    continue
                raise
            server.keep_workdir = keep_workdir
            return server
        raise last_error or ServerError("daphne did not start")
    except BaseException:
        if not keep_workdir:
            # Print the log before it is deleted: it is the only clue.
            sys.stderr.write(f"--- chatsite server log ({log_path}) ---\n")
            try:
                sys.stderr.write(_tail(log_path.read_text(errors="replace"), 200) + "\n")
            except FileNotFoundError:
                pass
            shutil.rmtree(workdir, ignore_errors=True)
        raise


@pytest.fixture
def daphne_factory() -> Iterator:
    """``start_daphne`` for one test: every server it started is stopped when the test ends."""
    servers: list[ServerHandle] = []

    def start(env_overrides: dict | None = None, **kwargs) -> ServerHandle:
        server = start_daphne(env_overrides, **kwargs)
        servers.append(server)
        return server

    start.servers = servers  # type: ignore[attr-defined]  # read by pytest_runtest_makereport
    yield start
    for server in reversed(servers):
        server.stop()


def tiny_model(folder: Path) -> dict:
    """A server's settings for the tests' tiny model (tests/inference_fixtures.py's tiny_model_dir)."""
    return {"CHAT_MODEL": str(folder), "CHAT_DEVICE": "cpu"}


# The session's server has a daily token budget no test comes near, so its pages show the day's use.
SITE_DAILY_TOKENS = 100_000


@pytest.fixture(scope="session")
def daphne_server(tiny_model_dir) -> Iterator[ServerHandle]:
    """One daphne for the whole session, on the tiny model, for the tests that are not about the model.

    Every test on it signs up users of its own (names unique across the
    suite); the first sign-up of the session is its administrator.
    """
    yield from _serving(start_daphne({**tiny_model(tiny_model_dir), "CHAT_USER_DAILY_TOKENS": SITE_DAILY_TOKENS}))


@pytest.fixture(scope="session")
def real_daphne_server() -> Iterator[ServerHandle]:
    """One daphne for the whole session with the real default model, for the tests that are about it."""
    yield from _serving(start_daphne())


def _serving(server: ServerHandle) -> Iterator[ServerHandle]:
    try:
        yield server
    finally:
        # A failing test gets the log tail in its own report (pytest_runtest_makereport);
        # a server that died between tests says so here.
        if not server.alive():
            sys.stderr.write(
                f"daphne exited early with status {server.process.returncode}; log tail:\n{_tail(server.log())}\n"
            )
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the log tail of every daphne a failing test used to that test's report.

    Written at the failure, not at the module's teardown: the failure's own
    section of the terminal report carries what its servers logged by then.
    """
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    for server in _servers_of(item):
        report.sections.append((f"Captured stderr daphne log tail {server.url}", _tail(server.log(), 120) + "\n"))


def _servers_of(item) -> list[ServerHandle]:
    servers: list[ServerHandle] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, ServerHandle):
            servers.append(value)
        servers.extend(getattr(value, "servers", ()))
    return servers
