"""A real OpenID Connect provider for sign-in tests (pytest plugin: ``tests.oidc_support``).

django-oauth-toolkit's OIDC server (the project in tests/oidc_provider) under ``runserver``, in a
process of its own on a free loopback port, with its own SQLite database and RSA signing key:

    def test_it(oidc_provider):                       # the session's provider
        oidc_provider.add_user("ann", "pw-ann", "ann@example.com")
        oidc_provider.add_client("chatsite-x", "secret-x", "http://127.0.0.1:8000/callback/")
        oidc_provider.issuer                          # http://127.0.0.1:PORT/o
        oidc_provider.revoke_client("chatsite-x")     # its codes and tokens stop working

One provider serves the whole session, so tests use usernames and client ids of their own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.live_server import REPO, ProcessLog, free_port, server_env, spawn

START_TIMEOUT = 60.0
START_ATTEMPTS = 3  # a free port can be taken by someone else before runserver binds it
LISTENING = "Starting development server at"  # runserver prints it once its socket is bound


class OidcProviderError(RuntimeError):
    """The provider did not start; the message carries its log's tail."""


@dataclass
class OidcProvider:
    port: int
    process: subprocess.Popen
    output: ProcessLog
    folder: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return self.url + "/o"

    def add_user(self, username: str, password: str, email: str, email_verified: bool = True, name: str = "") -> str:
        """A user who can sign in on the provider's login page; returns their `sub`."""
        data = {"username": username, "password": password, "email": email, "name": name}
        data["email_verified"] = "true" if email_verified else "false"
        return self._post("/test-admin/users/", data)["sub"]

    def add_client(self, client_id: str, client_secret: str, redirect_uri: str) -> None:
        """A confidential authorization-code client (RS256 ID tokens, no consent page)."""
        self._post(
            "/test-admin/clients/",
            {"client_id": client_id, "client_secret": client_secret, "redirect_uri": redirect_uri},
        )

    def revoke_client(self, client_id: str) -> None:
        """Delete the client, and with it its codes and tokens."""
        self._post(f"/test-admin/clients/{client_id}/revoke/", {})

    def _post(self, path: str, data: dict) -> dict:
        response = requests.post(self.url + path, data=data, timeout=10)
        if not response.ok:
            raise OidcProviderError(f"POST {path}: {response.status_code}\n{_tail(self.log())}")
        return response.json()

    def log(self) -> str:
        """Everything the provider (and its migrate) wrote so far."""
        try:
            return (self.folder / "provider.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the process and remove its folder. Safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(15)
        shutil.rmtree(self.folder, ignore_errors=True)


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _write_signing_key(path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)


def _provider_env(folder: Path, port: int) -> dict:
    # server_env drops the developer's Chatsite settings; the rest is the provider's own.
    return server_env(
        folder,
        {
            "DJANGO_SETTINGS_MODULE": "tests.oidc_provider.settings",
            "OIDC_PROVIDER_DB": folder / "db.sqlite3",
            "OIDC_PROVIDER_KEY": folder / "signing-key.pem",
            "OIDC_PROVIDER_ISSUER": f"http://127.0.0.1:{port}/o",
            "DJANGO_RUNSERVER_HIDE_WARNING": "true",
        },
    )


def _migrate(folder: Path) -> None:
    # --run-syncdb: the tables straight from the models (the provider's settings turn migrations off).
    log_path = folder / "provider.log"
    with open(log_path, "ab") as log:
        args = [sys.executable, "-m", "django", "migrate", "--run-syncdb", "--noinput"]
        result = subprocess.run(args, cwd=REPO, env=_provider_env(folder, 0), stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise OidcProviderError(f"migrate failed:\n{_tail(log_path.read_text(errors='replace'))}")


def _launch(folder: Path) -> OidcProvider:
    """One runserver on a free port, waited for until it serves its discovery document."""
    port = free_port()
    args = ["-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"]
    process, output = spawn(args, _provider_env(folder, port), folder / "provider.log")
    provider = OidcProvider(port, process, output, folder)
    if output.wait_for(LISTENING, START_TIMEOUT):
        discovery = requests.get(provider.issuer + "/.well-known/openid-configuration", timeout=10)
        if discovery.ok and discovery.json()["issuer"] == provider.issuer:
            return provider
    provider.process.kill()
    provider.process.wait()
    raise OidcProviderError(f"the OIDC provider did not start on port {port}:\n{_tail(provider.log())}")


def start_oidc_provider() -> OidcProvider:
    """A migrated, running provider in a fresh temporary folder; OidcProviderError (with its log) if it fails."""
    folder = Path(tempfile.mkdtemp(prefix="chatsite-oidc-"))
    try:
        _write_signing_key(folder / "signing-key.pem")
        _migrate(folder)
        for _ in range(START_ATTEMPTS - 1):
            try:
                return _launch(folder)
            except OidcProviderError as error:
                if "That port is already in use" not in str(error):
                    raise
        return _launch(folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OidcProvider]:
    """One provider for the session; tests make users and clients of their own on it."""
    provider = start_oidc_provider()
    yield provider
    provider.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test that used the provider gets its log tail in its report: what the provider refused, and why."""
    outcome = yield
    report = outcome.get_result()
    provider = getattr(item, "funcargs", {}).get("oidc_provider")
    if report.failed and isinstance(provider, OidcProvider):
        report.sections.append((f"OIDC provider log tail {provider.url}", _tail(provider.log()) + "\n"))
