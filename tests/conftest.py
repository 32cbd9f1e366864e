"""Shared fixtures: users, conversations, logged-in clients.

Model fixtures (a tiny model of the real architecture, engines on it) live in
tests/inference_fixtures.py; the throwaway PostgreSQL and Redis servers in
scripts/services.py.
"""

import pytest
from asgiref.sync import SyncToAsync
from django.core.management import call_command
from django.db import connections
from django.test import Client, override_settings

from conversations.endpoints.registry import Registry
from conversations.live import process, state
from conversations.live.runners.local import LocalRunner
from conversations.models import Conversation
from tests import server_settings

pytest_plugins = [
    "tests.inference_fixtures",
    "tests.live_server",
    "tests.browser_support",
    "tests.worker_support",
    "tests.endpoint_support",
    "tests.oidc_support",
]


@pytest.hookimpl(wrapper=True)
def pytest_sessionstart(session):
    """Static files as `make run` serves them: gathered, hashed and compressed into var/static.

    Pages name their scripts through the hashed-names manifest, and the daphne
    servers of tests/live_server.py serve var/static, so both need it current.
    Done once, before any test, by the main process (xdist's workers, which
    would write the same files at once, leave it to their controller). It runs
    after xdist has started its workers, while they import and collect the
    tests (2 s of one core on a fresh clone, with the other core idle before).
    """
    result = yield
    if not hasattr(session.config, "workerinput"):
        call_command("collectstatic", interactive=False, verbosity=0)
    return result


@pytest.fixture(scope="session", autouse=True)
def fast_password_hashing():
    """MD5 instead of PBKDF2's million rounds: every user a test makes costs 0.3 s less.

    No test here is about the strength of the stored hash; sign-up, login,
    lockout and the admin work the same with any hasher Django ships. The
    tests' server processes use the same one (tests/server_settings.py).
    """
    with override_settings(PASSWORD_HASHERS=server_settings.PASSWORD_HASHERS):
        yield


@pytest.fixture(scope="session", autouse=True)
def no_titles_unless_asked():
    """No title asked of the model after each first reply (tests/live/test_titles.py turns it on):
    it would outlive the test whose reply asked for it."""
    with override_settings(CHAT_TITLES=False):
        yield


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's test databases; before it drops them, close asgiref's thread's connections.

    Async tests run their database calls on asgiref's one thread for
    thread-sensitive code, which keeps its connection open after the test;
    on PostgreSQL that session made dropping the test database fail ("is being
    accessed by other users": a warning at the end of every server pass).
    """
    yield
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture
def make_user(django_user_model):
    def make(username: str, **extra):
        return django_user_model.objects.create_user(username=username, password="pw-" + username, **extra)

    return make


@pytest.fixture
def alice(make_user):
    return make_user("alice")


@pytest.fixture
def bob(make_user):
    return make_user("bob")


@pytest.fixture
def staff(make_user):
    return make_user("staffer", is_staff=True, is_superuser=True)


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_client(alice) -> Client:
    return logged_in(alice)


@pytest.fixture
def bob_client(bob) -> Client:
    return logged_in(bob)


@pytest.fixture
def conversation():
    """A factory: conversation(user, title=..., messages=[(role, text), ...])."""

    def make(user, messages=(), **fields) -> Conversation:
        fields.setdefault("title", "Test chat")
        convo = Conversation.objects.create(user=user, **fields)
        for role, text in messages:
            convo.append(role, text)
        return convo

    return make


@pytest.fixture(autouse=True)
def live():
    """Each test starts with this process's live state fresh, as the settings build it (no model loaded).

    It is one object (conversations.live.state), so a test that stops it,
    fills its sockets or swaps its engine leaves nothing to the next.
    """
    with state.swapped(process.build(load_engine=False)) as fresh:
        yield fresh


def local_models(engine) -> Registry:
    """The models of a process whose only model is `engine`'s (no endpoints)."""
    return Registry(local_engine=engine, local_model=engine.info.model_name, admin_endpoints=False)


def serving(engine) -> state.Live:
    """A local-mode live state whose runner generates on `engine`."""
    return state.Live(runner=LocalRunner(local_models(engine)))


@pytest.fixture
def engine(tiny_engine):
    """The tiny engine as this process's engine (what the consumer and commands use)."""
    with state.swapped(serving(tiny_engine)):
        yield tiny_engine


def pytest_collection_modifyitems(items) -> None:
    """Every test that uses the database also runs in the PostgreSQL pass.

    `.ci/run` runs `pytest -m postgres` against a real PostgreSQL, so the
    marker goes on each database test rather than on a hand-kept list. Tests
    that start their own server processes (`e2e`) bring their own database
    and are left to the default pass and, when marked `redis`, the server pass.
    So are tests marked `one_database`: tests of an engine whose database
    work is the same turn path tests/live runs on PostgreSQL.
    """
    for item in items:
        uses_db = item.get_closest_marker("django_db") or {"db", "transactional_db"} & set(item.fixturenames)
        if uses_db and not item.get_closest_marker("e2e") and not item.get_closest_marker("one_database"):
            item.add_marker(pytest.mark.postgres)
    _slow_files_first(items)


def _slow_files_first(items) -> None:
    """Files of browser tests, then of server processes, then the rest, each in collection order.

    pytest-xdist hands a worker a file at a time in this order (the Makefile's --no-loadscope-reorder;
    by default it orders files by their number of tests, which put the few slow browser files last):
    started first, the slowest files no longer leave one worker running alone at the end.
    """

    def file_of(item) -> str:
        return item.nodeid.split("::")[0]

    rank: dict[str, int] = {}
    for item in items:
        weight = 0 if item.get_closest_marker("browser") else 1 if item.get_closest_marker("e2e") else 2
        rank[file_of(item)] = min(weight, rank.get(file_of(item), 2))
    items.sort(key=lambda item: rank[file_of(item)])
