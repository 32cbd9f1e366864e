"""Single sign-on's pages and rules, in process (conversations/sso.py). The flow itself, against a real
OpenID Connect provider in its own process and a real browser, is tests/pages/test_browser_sso.py's."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from conversations import accounts, sso
from conversations.models import PendingAccount

pytestmark = pytest.mark.django_db

KEYCLOAK = {
    "provider_id": "keycloak",
    "name": "Keycloak",
    "client_id": "chatsite",
    "secret": "a-secret",
    "settings": {"server_url": "https://sso.example.com/realms/main", "oauth_pkce_enabled": True},
}


@pytest.fixture
def keycloak(settings):
    settings.SOCIALACCOUNT_PROVIDERS = {"openid_connect": {"OAUTH_PKCE_ENABLED": True, "APPS": [KEYCLOAK]}}


def test_the_login_page_has_a_button_for_each_provider_and_lets_its_form_go_there(keycloak):
    response = Client().get("/accounts/login/")
    page = response.content.decode()
    assert 'action="/accounts/oidc/keycloak/login/"' in page and "Sign in with Keycloak" in page
    assert 'name="password"' in page  # passwords stay, unless turned off
    form_action = re.search(r"form-action ([^;]+)", response["Content-Security-Policy"]).group(1).split()
    assert form_action == ["'self'", "https://sso.example.com"]


def test_without_providers_the_login_page_is_as_before():
    response = Client().get("/accounts/login/")
    assert "Sign in with" not in response.content.decode()
    assert "https://" not in re.search(r"form-action ([^;]+)", response["Content-Security-Policy"]).group(1)


def test_with_passwords_off_no_password_signs_in_anywhere(keycloak, settings, alice, staff):
    settings.CHATSITE_PASSWORD_LOGIN = False
    settings.AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "conversations.sso.NoPasswords"]
    client = Client()
    page = client.get("/accounts/login/").content.decode()
    assert "Sign in with Keycloak" in page and 'name="password"' not in page and "/accounts/signup/" not in page
    answer = client.post("/accounts/login/", {"username": "alice", "password": "pw-alice"})
    assert answer.status_code == 200 and "_auth_user_id" not in client.session
    answer = client.post("/admin/login/", {"username": "staffer", "password": "pw-staffer"})
    assert "_auth_user_id" not in client.session
    assert client.get("/accounts/signup/").status_code == 404
    # A session made before stays usable through the backend that keeps sessions.
    client.force_login(alice, backend="conversations.sso.NoPasswords")
    assert client.get("/").status_code == 200


def test_a_new_account_follows_the_sign_up_rule(settings):
    users = get_user_model().objects
    first = users.create_user("first-by-sso")
    accounts.admit(first)
    first.refresh_from_db()
    assert first.is_staff and first.is_superuser  # the first account runs the site, however it came
    settings.CHATSITE_SIGNUP = "approval"
    second = users.create_user("second-by-sso")
    accounts.admit(second)
    assert PendingAccount.objects.filter(user=second).exists() and not second.is_staff
    adapter = sso.SocialAdapter()
    assert adapter.is_open_for_signup(None, None)
    settings.CHATSITE_ALLOW_SIGNUP = False
    assert not adapter.is_open_for_signup(None, None)


def test_a_provider_set_in_the_admin_gets_its_button(staff):
    from allauth.socialaccount.models import SocialApp

    admin = Client()
    admin.force_login(staff)
    assert admin.get("/admin/socialaccount/socialapp/add/").status_code == 200  # where staff set one up
    SocialApp.objects.create(
        provider="openid_connect",
        provider_id="authentik",
        name="Authentik",
        client_id="chatsite",
        secret="a-secret",
        settings={"server_url": "https://auth.example.org/application/o/chatsite", "oauth_pkce_enabled": True},
    )
    response = Client().get("/accounts/login/")
    assert 'action="/accounts/oidc/authentik/login/"' in response.content.decode()
    assert "https://auth.example.org" in response["Content-Security-Policy"]


def test_a_locked_out_login_page_still_offers_the_providers(keycloak, settings, alice):
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attacker.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    locked = attacker.post("/accounts/login/", {"username": "alice", "password": "pw-alice"})
    assert locked.status_code == 429 and "Too many failed logins" in locked.content.decode()
    assert "Sign in with Keycloak" in locked.content.decode()  # single sign-on is no password: not locked out
    assert "https://sso.example.com" in locked["Content-Security-Policy"]  # and its button's form may go there
