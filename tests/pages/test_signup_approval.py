"""Sign-up approval (CHATSITE_SIGNUP=approval, conversations/accounts.py): a new account waits for staff, and
until they approve it no path reaches the model: not a page, not JSON, not the socket, not /v1, not
batch_prompts."""

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.test import Client

from conversations.api import keys as apikeys
from conversations.live.consumers import CLOSE_WAITING
from conversations.models import Conversation, PendingAccount
from tests.api.test_api import USER_ASKS, post
from tests.live.test_consumer import connect
from tests.pages.test_views_accounts import signup

pytestmark = pytest.mark.django_db


@pytest.fixture
def approval(settings):
    settings.CHATSITE_SIGNUP = "approval"


@pytest.fixture
def waiting(approval, staff):
    """A second account, made while sign-up needs approval, logged in (the staff account came first)."""
    client = Client()
    response = signup(client, "newcomer")
    assert response.status_code == 302 and response["Location"] == "/accounts/waiting/"
    return client, get_user_model().objects.get(username="newcomer")


def test_a_new_account_waits_and_sees_one_page(waiting, conversation, staff):
    client, user = waiting
    page = client.get("/accounts/waiting/")
    assert page.status_code == 200 and "Waiting for approval" in page.content.decode()
    chat = conversation(user, title="Somehow")
    for url in ("/", f"/c/{chat.id}/", "/settings/keys/", "/assistants/", "/c/import/"):
        assert client.get(url)["Location"] == "/accounts/waiting/", url
    for url in ("/api/conversations/", "/api/models/", "/api/usage/"):
        response = client.get(url)
        assert response.status_code == 403 and "waiting for approval" in response.json()["error"], url
    assert client.post("/c/new/", {"system_prompt": ""})["Location"] == "/accounts/waiting/"
    assert Conversation.objects.filter(user=user).count() == 1
    assert client.post("/accounts/logout/").status_code == 302  # the way out stays open


def test_the_first_account_never_waits_and_open_sign_up_lets_everyone_in(approval, client, settings):
    assert signup(client, "founder")["Location"] == "/"
    assert not PendingAccount.objects.exists()
    settings.CHATSITE_SIGNUP = "open"
    assert signup(Client(), "second")["Location"] == "/"
    assert not PendingAccount.objects.exists()


def test_staff_approve_it_in_the_admin_and_then_it_chats(waiting, staff):
    client, user = waiting
    admin = Client()
    admin.force_login(staff)
    listing = admin.get("/admin/conversations/pendingaccount/")
    assert listing.status_code == 200 and "newcomer" in listing.content.decode()
    pending = PendingAccount.objects.get(user=user)
    admin.post(
        "/admin/conversations/pendingaccount/", {"action": "approve", "_selected_action": [pending.pk]}, follow=True
    )
    assert not PendingAccount.objects.exists()
    assert client.get("/").status_code == 200
    assert client.get("/accounts/waiting/")["Location"] == "/"


def test_batch_prompts_refuses_an_account_that_waits(waiting, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\n")
    with pytest.raises(CommandError, match="waiting for approval"):
        call_command("batch_prompts", str(prompts), "--user", "newcomer")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_neither_its_socket_nor_its_api_key_reaches_the_model(engine, approval, staff, conversation):
    user = await get_user_model().objects.acreate(username="waiting-one")
    await PendingAccount.objects.acreate(user=user)
    chat = await sync_to_async(conversation)(user)
    _, connected, code = await connect(chat.id, user)
    assert not connected and code == CLOSE_WAITING
    key = (await sync_to_async(apikeys.create)(user, "made by staff"))[1]
    refused = await post(key, {"messages": USER_ASKS, "max_tokens": 4})
    assert refused.status_code == 401
    await PendingAccount.objects.filter(user=user).adelete()  # approved
    assert (await post(key, {"messages": USER_ASKS, "max_tokens": 4})).status_code == 200
