"""API keys: hashed storage, look-up, the settings page, the command; nobody reaches another's keys."""

import io

import pytest
from django.core.management import CommandError, call_command

from conversations.api import keys as apikeys
from conversations.models import ApiKey

pytestmark = pytest.mark.django_db


def test_only_a_hash_of_the_key_is_stored(alice):
    key, raw = apikeys.create(alice, "laptop")
    assert raw.startswith("cs-") and len(raw) >= 40
    stored = ApiKey.objects.values().get(id=key.id)
    assert raw not in {str(value) for value in stored.values()}
    assert stored["key_hash"] == apikeys.digest(raw) and stored["prefix"] == raw[: apikeys.PREFIX_LENGTH]


def test_a_key_authenticates_its_owner_and_records_its_use(alice):
    key, raw = apikeys.create(alice, "laptop")
    found = apikeys.authenticate(raw)
    assert found.id == key.id and found.user == alice
    assert ApiKey.objects.get(id=key.id).last_used_at is not None


@pytest.mark.parametrize(
    "mangle", [lambda raw: raw[:-1] + ("A" if raw[-1] != "A" else "B"), lambda raw: raw[:11], str.upper, lambda raw: ""]
)
def test_a_wrong_key_finds_nothing(alice, mangle):
    _, raw = apikeys.create(alice, "laptop")
    assert apikeys.authenticate(mangle(raw)) is None


def test_a_revoked_key_or_an_inactive_user_finds_nothing(alice, bob):
    key, raw = apikeys.create(alice, "laptop")
    _, bobs = apikeys.create(bob, "laptop")
    assert apikeys.revoke(alice, key.id)
    assert apikeys.authenticate(raw) is None
    bob.is_active = False
    bob.save()
    assert apikeys.authenticate(bobs) is None


def test_the_page_shows_a_new_key_once_then_only_its_prefix(alice_client):
    # Redirect-after-POST: reloading the page the key is shown on makes no second key.
    created = alice_client.post("/settings/keys/", {"name": "notebook"})
    assert created.status_code == 302 and created["Location"] == "/settings/keys/"
    shown = alice_client.get("/settings/keys/")
    assert shown["Cache-Control"] == "no-store"
    raw = shown.context["new_key"]
    assert f'<code id="new-key">{raw}</code>' in shown.content.decode()
    key = ApiKey.objects.get()
    assert key.name == "notebook" and apikeys.authenticate(raw).id == key.id

    reloaded = alice_client.get("/settings/keys/").content.decode()
    assert "notebook" in reloaded and key.prefix in reloaded and raw not in reloaded
    assert ApiKey.objects.count() == 1


def test_a_key_needs_a_name(alice_client):
    response = alice_client.post("/settings/keys/", {"name": ""})
    assert response.status_code == 200 and response.context["new_key"] is None
    assert not ApiKey.objects.exists()


def test_the_page_needs_a_login(client):
    assert client.get("/settings/keys/").status_code == 302


def test_users_see_and_revoke_only_their_own_keys(alice, bob, alice_client, bob_client):
    alices, alices_raw = apikeys.create(alice, "alice's secret tool")
    bobs, _ = apikeys.create(bob, "bob's tool")

    page = bob_client.get("/settings/keys/").content.decode()
    assert "bob&#x27;s tool" in page and "alice" not in page and alices.prefix not in page
    assert bob_client.post(f"/settings/keys/{alices.id}/revoke/").status_code == 404
    assert apikeys.authenticate(alices_raw) is not None

    response = alice_client.post(f"/settings/keys/{alices.id}/revoke/")
    assert response.status_code == 302
    assert apikeys.authenticate(alices_raw) is None
    assert ApiKey.objects.get(id=bobs.id).revoked_at is None
    assert alice_client.post(f"/settings/keys/{alices.id}/revoke/").status_code == 404  # already revoked


def test_the_command_prints_a_working_key_as_its_last_line(alice):
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", "alice", "--name", "ci", stdout=out, stderr=err)
    raw = out.getvalue().strip().splitlines()[-1]
    key = apikeys.authenticate(raw)
    assert key.user == alice and key.name == "ci"


def test_the_command_refuses_an_unknown_user(db):
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        call_command("create_api_key", "nobody", stdout=io.StringIO(), stderr=io.StringIO())
