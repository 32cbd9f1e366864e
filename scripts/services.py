#!/usr/bin/env python3
"""Throwaway PostgreSQL and Redis servers for tests, CI and development.

    from scripts.services import postgres_server, redis_server

    with postgres_server() as database_url, redis_server() as redis_url:
        ...  # postgresql://postgres@127.0.0.1:PORT/chatsite, redis://127.0.0.1:PORT/0

Each server listens only on a free loopback port, keeps everything in a fresh
temporary folder, and is stopped and its folder deleted when the block ends:
normally, by an exception, or by SIGINT/SIGTERM/SIGHUP.

From the command line it starts what is asked, exports DATABASE_URL and
REDIS_URL to a command, runs it, stops the servers and exits with the
command's status:

    python scripts/services.py --postgres --redis -- pytest -m redis
    python scripts/services.py --postgres        # print the URLs, wait for Ctrl-C

Standard library only and no Django: multi-process test fixtures import it,
and it must work before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)

# PostgreSQL refuses to run as root; as root we run it as this account
# (Debian's postgresql package creates it).
POSTGRES_ACCOUNT = "postgres"
# The database role in the URL, the same whoever runs the server.
POSTGRES_ROLE = "postgres"

# Settings for a server whose data nobody wants back: durability off.
POSTGRES_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "autovacuum": "off",
    "jit": "off",
    "max_connections": "200",
}

START_ATTEMPTS = 3  # a free port can be taken by someone else before we bind it
STOP_TIMEOUT = 10.0
_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ServiceError(RuntimeError):
    """A server could not be found, installed or started (the message is one line)."""


class _PortTaken(ServiceError):
    """The server lost the race for its port; another port may work."""


# --- the servers ---------------------------------------------------------


@contextlib.contextmanager
def postgres_server(dbname: str = "chatsite", timeout: float = 60.0) -> Iterator[str]:
    """Run a throwaway PostgreSQL server for the duration of the block.

    Yields a URL like ``postgresql://postgres@127.0.0.1:PORT/chatsite``; the
    database exists and the ``postgres`` role needs no password.
    Raises ServiceError if PostgreSQL is missing and cannot be installed, or
    does not become ready within ``timeout`` seconds.
    """
    bindir = _postgres_bindir()
    account = _postgres_account()
    with _stop_on_signals(), _temporary_folder("chatsite-pg-", account) as folder:
        data = folder / "data"
        started = time.monotonic()
        _run_checked(
            [
                bindir / "initdb",
                "-D",
                data,
                "-U",
                POSTGRES_ROLE,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ],
            account,
            timeout,
            "initdb",
            cwd=folder,
        )
        for attempt in range(1, START_ATTEMPTS + 1):
            port = _free_port()
            command = [bindir / "postgres", "-D", data, "-p", str(port), "-k", folder]
            for name, value in POSTGRES_SETTINGS.items():
                command += ["-c", f"{name}={value}"]
            # SIGINT is PostgreSQL's "fast shutdown".
            with _server(command, folder / "postgres.log", account, signal.SIGINT) as process:
                try:
                    _wait_for_postgres(process, data, folder / "postgres.log", started + timeout)
                except _PortTaken:
                    if attempt == START_ATTEMPTS:
                        raise
                    continue
                if dbname != "postgres":  # initdb made that one
                    _run_checked(
                        [bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", POSTGRES_ROLE, dbname],
                        None,
                        timeout,
                        "createdb",
                    )
                logger.info("PostgreSQL ready on 127.0.0.1:%d in %.1fs", port, time.monotonic() - started)
                yield f"postgresql://{POSTGRES_ROLE}@127.0.0.1:{port}/{dbname}"
                return


@contextlib.contextmanager
def redis_server(timeout: float = 30.0) -> Iterator[str]:
    """Run a throwaway Redis server for the duration of the block.

    Yields a URL like ``redis://127.0.0.1:PORT/0``. Nothing is ever saved.
    Raises ServiceError if redis-server is missing and cannot be installed,
    or does not answer PING within ``timeout`` seconds.
    """
    executable = shutil.which("redis-server") or _apt_install("redis-server", "redis-server")
    with _stop_on_signals(), _temporary_folder("chatsite-redis-", None) as folder:
        started = time.monotonic()
        for attempt in range(1, START_ATTEMPTS + 1):
            port = _free_port()
            command = [
                executable,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                folder,
                "--daemonize",
                "no",
                "--logfile",
                folder / "redis.log",
            ]
            with _server(command, folder / "redis.log", None, signal.SIGTERM) as process:
                try:
                    _wait_for_redis(process, port, folder / "redis.log", started + timeout)
                except _PortTaken:
                    if attempt == START_ATTEMPTS:
                        raise
                    continue
                logger.info("Redis ready on 127.0.0.1:%d in %.2fs", port, time.monotonic() - started)
                yield f"redis://127.0.0.1:{port}/0"
                return


@contextlib.contextmanager
def _server(
    command: list, log: Path, account: pwd.struct_passwd | None, stop_signal: int
) -> Iterator[subprocess.Popen]:
    """Start one server process; always stop it when the block ends."""
    # If this process is killed outright (SIGKILL), the kernel stops the server
    # too. The signal follows the thread that started the server, so only the
    # main thread, which lives as long as the process, asks for it.
    if threading.current_thread() is threading.main_thread() and shutil.which("setpriv"):
        command = ["setpriv", f"--pdeathsig={signal.Signals(stop_signal).name[3:]}", *command]
    with open(log, "ab") as log_file:
        process = subprocess.Popen(
            [str(part) for part in command],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_server_env(account),
            cwd=log.parent,
            # Our own session: a Ctrl-C in the terminal reaches us, not the
            # server, so the server stops after whatever still uses it.
            start_new_session=True,
            **_account_kwargs(account),
        )
    try:
        yield process
    finally:
        with _signals_deferred():
            _stop(process, stop_signal)


def _wait_for_postgres(process: subprocess.Popen, data: Path, log: Path, deadline: float) -> None:
    """Wait until the postmaster says "ready" in postmaster.pid."""
    pidfile = data / "postmaster.pid"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _raise_start_failure("PostgreSQL", log, process.returncode)
        try:
            lines = pidfile.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        # Line 8 is the postmaster status (PostgreSQL 10 and later).
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return
        time.sleep(0.05)
    raise ServiceError(f"PostgreSQL was not ready in time; last log line: {_last_line(log)}")


def _wait_for_redis(process: subprocess.Popen, port: int, log: Path, deadline: float) -> None:
    """Wait until Redis answers PING."""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _raise_start_failure("Redis", log, process.returncode)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise ServiceError(f"Redis was not ready in time; last log line: {_last_line(log)}")


def _raise_start_failure(name: str, log: Path, returncode: int) -> None:
    text = log.read_text(errors="replace") if log.exists() else ""
    if "already in use" in text or "Address in use" in text:
        raise _PortTaken(f"{name} could not bind its port: {_last_line(log)}")
    raise ServiceError(f"{name} exited with status {returncode}: {_last_line(log)}")


def _stop(process: subprocess.Popen, stop_signal: int) -> None:
    """Ask the server to stop, then insist."""
    for sig, timeout in ((stop_signal, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            logger.warning("pid %d ignored signal %s", process.pid, signal.Signals(sig).name)


# --- finding and installing binaries ------------------------------------


def _postgres_bindir() -> Path:
    """The folder holding initdb, postgres and createdb of one PostgreSQL version."""
    for bindir in _postgres_bindir_candidates():
        if all((bindir / name).is_file() for name in ("initdb", "postgres", "createdb")):
            return bindir
    _apt_install("postgresql", "PostgreSQL (initdb)")
    for bindir in _postgres_bindir_candidates():
        if all((bindir / name).is_file() for name in ("initdb", "postgres", "createdb")):
            return bindir
    raise ServiceError("PostgreSQL is installed but initdb, postgres and createdb are not in one folder")


def _postgres_bindir_candidates() -> Iterator[Path]:
    initdb = shutil.which("initdb")
    if initdb:
        yield Path(os.path.realpath(initdb)).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip():
            yield Path(result.stdout.strip())
    # Debian keeps server binaries off PATH; prefer the newest version.
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True):
        yield Path(bindir)


def _version_key(bindir: str) -> tuple[int, ...]:
    version = Path(bindir).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _apt_install(package: str, what: str) -> str:
    """Install a Debian package when we may (root), else fail in one line."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ServiceError(f"{what} is not installed; install it with: sudo apt-get install -y {package}")
    logger.info("%s is missing; installing Debian's %s", what, package)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for another apt run (a machine still provisioning) instead of failing.
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    for command in (["apt-get", *lock, "update"], ["apt-get", *lock, "install", "-y", package]):
        # apt's chatter goes to stderr: stdout may be a command's output.
        result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=2, env=env)
        if result.returncode != 0:
            raise ServiceError(f"{shlex.join(command)} failed with status {result.returncode}")
    return shutil.which(package) or package


# --- accounts, folders, ports, signals ----------------------------------


def _postgres_account() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: None means ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(POSTGRES_ACCOUNT)
    except KeyError:
        raise ServiceError(
            f"running as root needs the '{POSTGRES_ACCOUNT}' account to run PostgreSQL "
            "(apt-get install -y postgresql creates it)"
        ) from None


def _account_kwargs(account: pwd.struct_passwd | None) -> dict:
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _server_env(account: pwd.struct_passwd | None) -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) of the caller must not steer our server.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    return env


def _run_checked(
    command: list, account: pwd.struct_passwd | None, timeout: float, name: str, cwd: Path | None = None
) -> None:
    try:
        result = subprocess.run(
            [str(part) for part in command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_server_env(account),
            cwd=cwd,
            **_account_kwargs(account),
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{name} did not finish in {timeout:.0f}s") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines() or ["(no output)"]
        raise ServiceError(f"{name} failed with status {result.returncode}: {lines[-1]}")


@contextlib.contextmanager
def _temporary_folder(prefix: str, account: pwd.struct_passwd | None) -> Iterator[Path]:
    """A fresh folder owned by ``account`` (or us), deleted at the end."""
    parent = None
    if account is not None and not _traversable_by_all(Path(tempfile.gettempdir())):
        parent = "/tmp"  # e.g. TMPDIR under /root, which the postgres account cannot enter
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        if account is not None:
            os.chown(folder, account.pw_uid, account.pw_gid)
        yield folder
    finally:
        with _signals_deferred():
            try:
                shutil.rmtree(folder)
            except OSError as error:
                logger.warning("could not remove %s: %s", folder, error)


def _traversable_by_all(path: Path) -> bool:
    return all(os.stat(part).st_mode & 0o001 for part in (path, *path.parents))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return "(no log)"
    return lines[-1].strip() if lines else "(empty log)"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Make SIGTERM/SIGHUP (and a default SIGINT) unwind the stack while a server runs.

    By default they kill Python without running ``finally`` blocks, which
    would leave the server and its folder behind. KeyboardInterrupt, unlike
    SystemExit, also makes pytest stop the run and tear down its fixtures.
    Handlers someone else installed are left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers
        return
    previous = {}
    for sig in _HANDLED_SIGNALS:
        if signal.getsignal(sig) == signal.SIG_DFL:
            previous[sig] = signal.signal(sig, _interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends, so cleanup is not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


# --- command line --------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options, command = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog="services.py",
        usage="%(prog)s [--postgres] [--redis] [-- CMD ARGS...]",
        description="Start throwaway servers, run CMD with DATABASE_URL/REDIS_URL set, "
        "stop the servers and exit with CMD's status. Without CMD, print the "
        "variables and wait for Ctrl-C.",
    )
    parser.add_argument("--postgres", action="store_true", help="start PostgreSQL, set DATABASE_URL")
    parser.add_argument("--redis", action="store_true", help="start Redis, set REDIS_URL")
    args = parser.parse_args(options)
    if not (args.postgres or args.redis):
        parser.error("nothing to start: pass --postgres and/or --redis")
    logging.basicConfig(level=logging.INFO, format="services.py: %(message)s", stream=sys.stderr)

    runner = _CommandRunner(command)
    previous = {sig: signal.signal(sig, runner.on_signal) for sig in _HANDLED_SIGNALS}
    try:
        with contextlib.ExitStack() as servers:
            env = dict(os.environ)
            if args.postgres:
                env["DATABASE_URL"] = servers.enter_context(postgres_server())
            if args.redis:
                env["REDIS_URL"] = servers.enter_context(redis_server())
            return runner.run(env)
    except ServiceError as error:
        print(f"services.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 128 + runner.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _CommandRunner:
    """Runs CMD and passes our signals on to it, so it stops before the servers do."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.process: subprocess.Popen | None = None
        self.signum = signal.SIGINT

    def run(self, env: dict[str, str]) -> int:
        if not self.command:
            for name in ("DATABASE_URL", "REDIS_URL"):
                if name in env and env.get(name) != os.environ.get(name):
                    print(f"export {name}={shlex.quote(env[name])}", flush=True)
            # Held, then waited for: signal.pause() would miss a signal that lands
            # between Python's last check for one and the pause, and wait for another.
            with _signals_deferred():
                print("# servers are running; press Ctrl-C to stop them", file=sys.stderr, flush=True)
                self.signum = signal.sigwait(_HANDLED_SIGNALS)
            raise KeyboardInterrupt  # unwind and stop the servers
        try:
            self.process = subprocess.Popen(self.command, env=env)
        except OSError as error:
            print(f"services.py: error: cannot run {self.command[0]}: {error.strerror}", file=sys.stderr)
            return 127
        returncode = self.process.wait()
        return 128 - returncode if returncode < 0 else returncode

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self.process is None or self.process.poll() is not None:
            raise KeyboardInterrupt  # nothing to wait for: unwind and stop the servers
        # A Ctrl-C in the terminal already reached CMD, which shares our
        # process group; sending it a second one could cut its cleanup short.
        if signum == signal.SIGINT and _in_terminal_foreground():
            return
        self.process.send_signal(signum)


def _in_terminal_foreground() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    sys.exit(main())
