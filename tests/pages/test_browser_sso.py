"""Single sign-on in a real browser, against a real OpenID Connect provider (django-oauth-toolkit, in a
process of its own: tests/oidc_support.py) and a Chatsite configured from the environment (CHATSITE_OIDC).

allauth reads the provider's discovery document, and the code flow runs with PKCE and a state, as a
person's browser would run it: the login button, the provider's login page, the callback.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from playwright.sync_api import Page, expect

from tests.browser_support import PASSWORD, audit, close, new_page, ready, sign_up
from tests.live_server import REPO, start_daphne

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

CLIENT_ID = "chatsite-browser"
SECRET = "a-client-secret-for-the-tests"


@pytest.fixture(scope="module")
def site(oidc_provider):
    """A Chatsite without a model (the pages are the point) whose one provider is the test provider."""
    env = {
        "CHAT_INFERENCE": "none",
        "CHATSITE_OIDC": f"TestIdP={oidc_provider.issuer}",
        "CHATSITE_OIDC_TESTIDP_CLIENT_ID": CLIENT_ID,
        "CHATSITE_OIDC_TESTIDP_SECRET": SECRET,
    }
    with start_daphne(env) as server:
        oidc_provider.add_client(CLIENT_ID, SECRET, callback(server))
        yield server


def callback(server) -> str:
    return f"{server.url}/accounts/oidc/testidp/login/callback/"


def sign_in_at_the_provider(page: Page, site, provider, username: str) -> None:
    page.goto(site.url + "/accounts/login/")
    page.get_by_role("button", name="Sign in with TestIdP").click()
    expect(page).to_have_url(re.compile(re.escape(provider.url) + "/login/"))
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill("pw-" + username)
    page.get_by_role("button", name="Sign in").click()


def set_email(site, username: str, email: str) -> None:
    """What staff do in the admin's user page: give a local account its email."""
    script = "from django.contrib.auth.models import User\n"
    script += f"User.objects.filter(username={username!r}).update(email={email!r})"
    command = [sys.executable, "manage.py", "shell", "-c", script]
    subprocess.run(command, cwd=REPO, env=site.env, check=True, timeout=120)


def test_the_first_account_signs_in_with_the_provider_and_runs_the_site(browser, site, oidc_provider):
    oidc_provider.add_user("oriel", "pw-oriel", "oriel@example.com")
    context, page, problems = new_page(browser)
    page.goto(site.url + "/accounts/login/")
    assert audit(page, "the login page with a provider") == []
    sign_in_at_the_provider(page, site, oidc_provider, "oriel")
    expect(page).to_have_url(site.url + "/")
    ready(page)
    expect(page.get_by_role("link", name="Admin: browse transcripts")).to_be_visible()  # the first account
    expect(page.locator("#sidebar")).to_contain_text("oriel")
    problems.check()
    close(context)


def test_a_verified_email_signs_in_to_the_local_account_with_it(browser, site, oidc_provider):
    context, page, problems = new_page(browser)
    sign_up(page, site.url, "bea-local")  # an account with a password, made before single sign-on
    close(context)
    set_email(site, "bea-local", "bea@example.com")
    oidc_provider.add_user("bea", "pw-bea", "bea@example.com")
    oidc_provider.add_user("mallory", "pw-mallory", "bea@example.com", email_verified=False)
    context, page, problems = new_page(browser)
    sign_in_at_the_provider(page, site, oidc_provider, "bea")
    expect(page).to_have_url(site.url + "/")
    expect(page.locator("#sidebar")).to_contain_text("bea-local")  # the same account, not a second one
    close(context)
    # The provider does not vouch for this one's email: it is never let into bea-local's account.
    context, page, problems = new_page(browser)
    sign_in_at_the_provider(page, site, oidc_provider, "mallory")
    page.goto(site.url + "/")
    expect(page.locator("body")).not_to_contain_text("bea-local")
    close(context)


def test_a_forged_state_and_a_revoked_client_sign_nobody_in(browser, site, oidc_provider):
    oidc_provider.add_user("ivo", "pw-ivo", "ivo@example.com")
    context, page, problems = new_page(browser)
    page.goto(site.url + "/accounts/login/")
    page.get_by_role("button", name="Sign in with TestIdP").click()  # a flow under way, whose state is not this
    page.goto(callback(site) + "?code=stolen&state=forged")
    expect(page.get_by_role("heading", name="Sign-in failed")).to_be_visible()
    page.goto(site.url + "/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    # The client's secret is revoked at the provider (a new one issued that this site does not have):
    # the person signs in there, and the code the callback brings cannot be exchanged.
    oidc_provider.revoke_client(CLIENT_ID)
    oidc_provider.add_client(CLIENT_ID, "a-secret-this-site-lacks", callback(site))
    sign_in_at_the_provider(page, site, oidc_provider, "ivo")
    expect(page.get_by_role("heading", name="Sign-in failed")).to_be_visible()
    assert audit(page, "a failed sign-in") == []
    page.goto(site.url + "/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    # The client revoked altogether: the provider refuses to start the flow, and nobody is signed in.
    oidc_provider.revoke_client(CLIENT_ID)
    page.goto(site.url + "/accounts/login/")
    page.get_by_role("button", name="Sign in with TestIdP").click()
    expect(page).to_have_url(re.compile(re.escape(oidc_provider.issuer) + "/authorize/"))
    page.goto(site.url + "/")
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    oidc_provider.add_client(CLIENT_ID, SECRET, callback(site))  # for the tests after this one
    close(context)


def test_a_password_still_signs_in_beside_the_provider(browser, site):
    context, page, problems = new_page(browser)
    sign_up(page, site.url, "pat-local")
    page.context.clear_cookies()
    page.goto(site.url + "/accounts/login/")
    expect(page.get_by_role("button", name="Sign in with TestIdP")).to_be_visible()
    page.get_by_label("Username").fill("pat-local")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(site.url + "/")
    problems.check()
    close(context)
