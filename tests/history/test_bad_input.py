"""Malformed input to import and the conversation list: a clear refusal, never an HTTP 500 (issue 29, item 4)."""

import base64
import json
import subprocess
import sys

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from conversations.models import Conversation
from tests.live_server import REPO

pytestmark = pytest.mark.django_db(transaction=True)

JSON = {"Accept": "application/json"}


def upload(client, data):
    body = json.dumps(data).encode()
    return client.post("/c/import/", {"file": SimpleUploadedFile("export.json", body)}, headers=JSON)


def chatsite_entry(**fields) -> dict:
    entry = {"title": "Imported", "messages": [{"role": "user", "content": "Hi"}]}
    return entry | fields


def chatgpt_entry(current_node="a", parent=None, role="user") -> dict:
    node = {"id": "a", "parent": parent, "message": {"author": {"role": role}, "content": {"parts": ["Hi"]}}}
    return {"title": "ChatGPT", "mapping": {"a": node}, "current_node": current_node}


@pytest.mark.parametrize(
    "entry, says",
    [
        (chatgpt_entry(current_node=["a"]), "current_node"),
        (chatgpt_entry(current_node={"a": 1}), "current_node"),
        (chatgpt_entry(parent=["root"]), "parent"),
        (chatgpt_entry(role=["user"]), "imported"),  # a node of no known role is left out, as a tool's
        (chatsite_entry(messages=[{"role": ["user"], "content": "Hi"}]), "role must be"),
        (chatsite_entry(messages=[{"role": {"a": 1}, "content": "Hi"}]), "role must be"),
        (chatsite_entry(created_at="0001-01-01T00:00:00+05:00"), "created_at"),
        (chatsite_entry(updated_at="9999-12-31T23:59:59-05:00"), "updated_at"),
        (chatsite_entry(messages=[{"role": "user", "content": "Hi", "created_at": "0001-01-01T01:00+02:00"}]), "time"),
    ],
)
def test_a_malformed_entry_is_skipped_saying_why(alice_client, alice, entry, says):
    response = upload(alice_client, [entry, chatsite_entry(title="Fine")])
    assert response.status_code == 200, response.content[:300]
    data = response.json()
    assert data["imported"] >= 1
    assert says in json.dumps(data)
    assert Conversation.objects.filter(title="Fine").exists()


def test_a_lone_surrogate_in_the_file_is_reported_and_what_came_before_is_kept(alice_client, alice):
    """UTF-8 bytes of a lone surrogate (ED A0 80) made the parser raise UnicodeDecodeError: an HTTP 500."""
    good = json.dumps(chatsite_entry(title="Fine")).encode()
    body = b"[" + good + b', {"title": "bad \xed\xa0\x80", "messages": []}]'
    response = alice_client.post("/c/import/", {"file": SimpleUploadedFile("export.json", body)}, headers=JSON)
    assert response.status_code == 200
    data = response.json()
    assert data["imported"] == 1 and "not valid UTF-8" in data["error"]
    assert Conversation.objects.filter(title="Fine").exists()


def cursor(key: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "params, says",
    [
        ({"limit": "²"}, "limit"),
        ({"limit": "٣"}, "limit"),
        ({"cursor": cursor([0, "0001-01-01T00:00:00+05:00", "0" * 32])}, "cursor"),
        ({"cursor": cursor([1, "9999-12-31T23:59:59-05:00", "0" * 32])}, "cursor"),
        ({"q": "x", "cursor": cursor(["0001-01-01T00:30:00+01:00", "0" * 32])}, "cursor"),
    ],
)
def test_a_malformed_list_query_is_a_400_naming_it(alice_client, alice, params, says):
    response = alice_client.get("/api/conversations/", params)
    assert response.status_code == 400
    assert says in response.json()["error"]


NESTED = """
import io, resource, sys
import django
django.setup()
from django.contrib.auth import get_user_model
from conversations.history import importing

depth = int(sys.argv[1])
body = io.BytesIO(b"[" * depth + b"]" * depth)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = importing.import_file(get_user_model()(pk=1, username="nobody"), body)
grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(f"{grown_mb:.0f} MB grown; error: {result.error}")
"""


@pytest.mark.parametrize("depth", [12_000, 100_000])
def test_deep_nesting_stops_the_import_before_it_costs_memory(depth):
    """Issue 29, item 2: 12,000 nested brackets (24 KB) took about 300 MB with ijson.items; 100,000 took 21 GB.

    Run in a fresh interpreter so its peak memory is this import's alone; the
    file is refused before any entry is built, so no database is needed.
    """
    done = subprocess.run(
        [sys.executable, "-c", NESTED, str(depth)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert done.returncode == 0, done.stderr[-2000:]
    grown, error = done.stdout.strip().split(" MB grown; error: ")
    assert "nests deeper than 64 levels" in error
    assert int(grown) < 20
