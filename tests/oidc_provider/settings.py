"""Settings of the test OpenID Connect provider: a minimal Django project around django-oauth-toolkit.

Everything that differs between runs comes from the environment, set by tests/oidc_support.py:
OIDC_PROVIDER_DB (its SQLite file), OIDC_PROVIDER_KEY (a PEM file with its RSA signing key) and
OIDC_PROVIDER_ISSUER (http://127.0.0.1:PORT/o). Not a production configuration in any way.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "oidc-provider-tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "oauth2_provider",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "tests.oidc_provider.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,  # DOT's own templates (its error page)
        "OPTIONS": {"context_processors": ["django.template.context_processors.request"]},
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("OIDC_PROVIDER_DB", BASE_DIR / "unset.sqlite3"),
        # runserver answers on threads: a login's session write may meet a token's write.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Tables straight from the models (`migrate --run-syncdb`), as pytest-django's --nomigrations does:
# a second where replaying DOT's 22 migrations on SQLite takes two and more, on every test run. Their
# data migrations have nothing to do in an empty database.
MIGRATION_MODULES = {app: None for app in ("auth", "contenttypes", "sessions", "oauth2_provider")}
# DOT defaults its swappable models in its own settings only; migrate's check for model changes
# looks them up on django.conf.settings, so without migrations they must be named here.
OAUTH2_PROVIDER_APPLICATION_MODEL = "oauth2_provider.Application"
OAUTH2_PROVIDER_ACCESS_TOKEN_MODEL = "oauth2_provider.AccessToken"
OAUTH2_PROVIDER_ID_TOKEN_MODEL = "oauth2_provider.IDToken"
OAUTH2_PROVIDER_GRANT_MODEL = "oauth2_provider.Grant"
OAUTH2_PROVIDER_REFRESH_TOKEN_MODEL = "oauth2_provider.RefreshToken"
OAUTH2_PROVIDER_DEVICE_GRANT_MODEL = "oauth2_provider.DeviceGrant"
USE_TZ = True

# Browsers keep cookies per host, not per port: under its default names the provider's session
# and CSRF cookies on 127.0.0.1 would overwrite Chatsite's, on the same host in the same browser.
SESSION_COOKIE_NAME = "oidc_provider_sessionid"
CSRF_COOKIE_NAME = "oidc_provider_csrftoken"

LOGIN_URL = "/login/"

# DOT checks client secrets with Django's default hasher; PBKDF2's million rounds would cost every
# token exchange (and every user made) a large part of a second. Nothing here is about hash strength.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _signing_key() -> str:
    path = os.environ.get("OIDC_PROVIDER_KEY")
    return Path(path).read_text() if path else ""


OAUTH2_PROVIDER = {
    "OIDC_ENABLED": True,
    "OIDC_RSA_PRIVATE_KEY": _signing_key(),
    "OIDC_ISS_ENDPOINT": os.environ.get("OIDC_PROVIDER_ISSUER", ""),
    "PKCE_REQUIRED": True,
    # Only S256, as allauth sends it: "plain" is refused and left out of the discovery document.
    "COMPLIANT_BCP_RFC9700_PKCE_METHOD": True,
    "SCOPES": {"openid": "OpenID Connect", "profile": "Your name and username", "email": "Your email address"},
    "DEFAULT_SCOPES": ["openid"],
    "OAUTH2_VALIDATOR_CLASS": "tests.oidc_provider.validators.ClaimsValidator",
}

# With DEBUG off Django prints nothing of a failing request; the log tail is the tests' only clue.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {"django.server": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
