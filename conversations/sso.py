"""Single sign-on with OpenID Connect, through django-allauth (docs/deploy.md, "Single sign-on").

Providers come from CHATSITE_OIDC (chatsite/settings.py turns it into
allauth's SOCIALACCOUNT_PROVIDERS) or from the admin's *Social applications*
(provider "OpenID Connect", its issuer as the app's `server_url` setting).
allauth runs the flow: discovery, the authorization code with PKCE, the ID
token checked against the provider's keys. What is Chatsite's is here:

- The login page shows a button for each provider, and its
  Content-Security-Policy lets that form go on to the provider (a browser
  checks `form-action` on the redirect a form's answer makes).
- A new account follows the site's sign-up rule (conversations.accounts):
  the first account runs the site, the others wait for approval under
  CHATSITE_SIGNUP=approval, and none is made when sign-up is closed.
- An account whose email the provider says is verified signs in to the
  local account with that email (allauth's email authentication).
- CHATSITE_PASSWORD_LOGIN=0 turns local passwords off: no backend accepts
  one, and the login page shows the providers alone.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from allauth.socialaccount.adapter import DefaultSocialAccountAdapter, get_adapter
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.views import LoginView

from . import accounts

PROVIDER = "openid_connect"


class SocialAdapter(DefaultSocialAccountAdapter):
    """allauth's choices, as the site's sign-up rule makes them."""

    def is_open_for_signup(self, request, sociallogin) -> bool:
        return settings.CHATSITE_ALLOW_SIGNUP or not get_user_model().objects.exists()

    def save_user(self, request, sociallogin, form=None):
        user = super().save_user(request, sociallogin, form)
        accounts.admit(user)
        return user


class NoPasswords(ModelBackend):
    """Keeps sessions (get_user) and accepts no password: the backend where CHATSITE_PASSWORD_LOGIN=0."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        return None


def providers(request) -> list[dict]:
    """The sign-in buttons: [{"name", "login_url", "origin"}], from the settings and the admin."""
    buttons = []
    for provider in get_adapter().list_providers(request):
        if provider.id != PROVIDER:
            continue
        issuer = provider.app.settings.get("server_url", "")
        parts = urlsplit(issuer)
        buttons.append(
            {
                "name": provider.name,
                "login_url": provider.get_login_url(request),
                "origin": f"{parts.scheme}://{parts.netloc}" if parts.netloc else "",
            }
        )
    return buttons


def login_context(request) -> dict:
    """What the login page shows besides its form: the provider buttons, and whether passwords sign in."""
    return {"sso_providers": providers(request), "password_login": settings.CHATSITE_PASSWORD_LOGIN}


def allowing_providers(response, context: dict):
    """`response` (a login page of `context`) with its buttons' providers in its CSP `form-action`."""
    origins = sorted({button["origin"] for button in context["sso_providers"] if button["origin"]})
    if origins:
        response._csp_update = {"form-action": origins}
    return response


class Login(LoginView):
    """Django's login page, with a button for each provider, and without the password form where
    CHATSITE_PASSWORD_LOGIN=0 (a password posted then is refused as wrong, by NoPasswords)."""

    def get_context_data(self, **kwargs):
        return super().get_context_data(**kwargs) | login_context(self.request)

    def render_to_response(self, context, **response_kwargs):
        return allowing_providers(super().render_to_response(context, **response_kwargs), context)
