"""scripts/services.py: real throwaway servers, started and stopped for real.

These start their own servers, so they run in the default suite as well as
in the server pass. No Django here.
"""

import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import redis

from scripts.services import postgres_server, redis_server

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "scripts" / "services.py"

# A process that starts a server, prints its URL and folder, then waits to be killed.
# HOLD_WAIT: not a blocking read of stdin. The test signals the moment it reads the
# line; a signal that lands after Python's last check for signals but before a blocking
# read() starts only marks the handler as pending, and the read never returns (seen:
# the holder stuck in read() 20 s after SIGINT). A short sleep ends with the handler run.
# HOLD_SIGINT: Python's own SIGINT handling, even where the process was started with
# SIGINT ignored: a shell without job control starts its background commands so (`cmd &`
# in a script), and a holder under such a pytest outlived its SIGINT (seen: SigIgn in its
# /proc status). A user's process started from a terminal has it.
HOLD_POSTGRES = """
import psycopg, signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # see HOLD_SIGINT
from scripts.services import postgres_server
with postgres_server() as url:
    with psycopg.connect(url) as connection:
        folder = connection.execute("show data_directory").fetchone()[0]
    print(url, folder, flush=True)
    while True:
        time.sleep(0.05)  # see HOLD_WAIT
"""
HOLD_REDIS = """
import redis, signal, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # see HOLD_SIGINT
from scripts.services import redis_server
with redis_server() as url:
    folder = redis.Redis.from_url(url).config_get("dir")["dir"]
    print(url, folder, flush=True)
    while True:
        time.sleep(0.05)  # see HOLD_WAIT
"""
# The same through the command line: CMD prints what it was given.
PRINT_REDIS = """
import os, sys, redis
url = os.environ["REDIS_URL"]
print(url, redis.Redis.from_url(url).config_get("dir")["dir"], flush=True)
sys.stdin.read()
"""


def refuses_connections(url: str) -> bool:
    try:
        socket.create_connection(("127.0.0.1", urlsplit(url).port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def redis_folder(url: str) -> Path:
    client = redis.Redis.from_url(url)
    try:
        return Path(client.config_get("dir")["dir"])
    finally:
        client.close()


def start_holding(args: list[str], stderr: Path) -> tuple[subprocess.Popen, str, Path]:
    """Start a process that holds a server, its stderr to the file `stderr`; returns it, the URL and the folder."""
    with stderr.open("w") as file:  # the child has its own copy of the file descriptor
        process = subprocess.Popen(
            args, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=file, text=True
        )
    url, folder = process.stdout.readline().split()
    return process, url, Path(folder)


def exited(process: subprocess.Popen, stderr: Path, timeout: float = 30) -> int:
    """The holder's exit status; it fails the test with the holder's stderr if it is still running."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the holder still ran {timeout:.0f} s after the signal; its stderr:\n{stderr.read_text()}")


@pytest.mark.postgres
def test_it_starts_postgres_and_removes_it():
    with postgres_server() as url:
        assert url.startswith("postgresql://postgres@127.0.0.1:")
        with psycopg.connect(url) as connection:
            assert connection.execute("select 1").fetchone() == (1,)
            assert connection.info.dbname == "chatsite"
            assert connection.execute("show listen_addresses").fetchone() == ("127.0.0.1",)
            assert connection.execute("show fsync").fetchone() == ("off",)
            folder = Path(connection.execute("show data_directory").fetchone()[0])
        assert folder.is_dir()

    assert not folder.exists()
    assert not folder.parent.exists()
    assert refuses_connections(url)


@pytest.mark.postgres
def test_it_gives_each_postgres_its_own_port_and_database():
    with postgres_server() as first, postgres_server(dbname="other") as second:
        assert urlsplit(first).port != urlsplit(second).port
        with psycopg.connect(second) as connection:
            assert connection.execute("select current_database()").fetchone() == ("other",)


@pytest.mark.redis
def test_it_starts_redis_and_removes_it():
    with redis_server() as url:
        assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
        client = redis.Redis.from_url(url)
        assert client.ping()
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("bind") == {"bind": "127.0.0.1"}
        client.close()
        folder = redis_folder(url)
        assert folder.is_dir()

    assert not folder.exists()
    assert refuses_connections(url)


@pytest.mark.redis
def test_it_stops_redis_when_the_block_raises():
    with pytest.raises(ZeroDivisionError):
        with redis_server() as url:
            folder = redis_folder(url)
            raise ZeroDivisionError

    assert not folder.exists()
    assert refuses_connections(url)


@pytest.mark.parametrize(
    "code",
    [
        pytest.param(HOLD_POSTGRES, marks=pytest.mark.postgres, id="postgres"),
        pytest.param(HOLD_REDIS, marks=pytest.mark.redis, id="redis"),
    ],
)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_it_cleans_up_when_the_process_is_signalled(code, signum, tmp_path):
    stderr = tmp_path / "stderr"
    process, url, folder = start_holding([sys.executable, "-c", code], stderr)
    assert folder.is_dir()

    process.send_signal(signum)
    exited(process, stderr)

    assert process.returncode != 0
    assert not folder.exists()
    assert refuses_connections(url)


@pytest.mark.redis
def test_it_exports_redis_url_and_returns_the_command_status():
    command = "import os, sys; print(os.environ['REDIS_URL']); sys.exit(3)"
    result = subprocess.run(
        [sys.executable, SERVICES, "--redis", "--", sys.executable, "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 3
    assert result.stdout.startswith("redis://127.0.0.1:")
    assert refuses_connections(result.stdout.strip())


@pytest.mark.postgres
def test_it_exports_database_url():
    command = "import os, psycopg; psycopg.connect(os.environ['DATABASE_URL']).execute('select 1')"
    result = subprocess.run(
        [sys.executable, SERVICES, "--postgres", "--", sys.executable, "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr


@pytest.mark.redis
def test_it_passes_sigterm_to_the_command_then_stops_the_servers(tmp_path):
    stderr = tmp_path / "stderr"
    process, url, folder = start_holding(
        [sys.executable, SERVICES, "--redis", "--", sys.executable, "-c", PRINT_REDIS], stderr
    )

    process.send_signal(signal.SIGTERM)
    exited(process, stderr)

    assert process.returncode == 128 + signal.SIGTERM  # the command's own fate
    assert not folder.exists()
    assert refuses_connections(url)


@pytest.mark.redis
def test_without_a_command_it_prints_the_url_and_stops_the_servers_at_a_signal():
    process = subprocess.Popen(
        [sys.executable, SERVICES, "--redis"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        export = process.stdout.readline()
        assert export.startswith("export REDIS_URL=redis://127.0.0.1:")
        url = export.strip().split("=", 1)[1]
        folder = redis_folder(url)
        # Signalled the moment it says it waits: the signal must not be missed.
        for line in process.stderr:
            if "servers are running" in line:
                break
        else:
            pytest.fail("services.py ended before it waited")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()

    assert process.returncode == 128 + signal.SIGTERM
    assert not folder.exists()
    assert refuses_connections(url)


def test_it_refuses_to_start_nothing():
    result = subprocess.run([sys.executable, SERVICES, "--", "true"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 2
    assert "nothing to start" in result.stderr


def test_it_reports_a_missing_command_in_one_line():
    result = subprocess.run(
        [sys.executable, SERVICES, "--redis", "--", "no-such-command-chatsite"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 127
    assert "cannot run no-such-command-chatsite" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_needs_only_the_standard_library():
    # make and CI call the CLI before (or without) the virtual environment.
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    result = subprocess.run([base_python, "-I", SERVICES, "--help"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "--postgres" in result.stdout
