"""Chatsite settings, read from environment variables.

Every variable is optional; with nothing set the site runs on SQLite under
var/, an in-memory channel layer and the packaged SmolLM2 model. A bad value
raises ImproperlyConfigured naming the variable and the value, which
manage.py and asgi.py turn into one line instead of a traceback.
"""

import os
import re
import secrets
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"


def env_bool(name: str, default: bool) -> bool:
    value = os.getenv(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: expected 1 or 0")


def env_int(name: str, default: int, minimum: int = 0, maximum: int = 2**31) -> int:
    value = os.getenv(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not minimum <= number <= maximum:
        raise ImproperlyConfigured(f"{name}={value!r}: expected a whole number from {minimum} to {maximum}")
    return number


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.getenv(name) or default
    if value not in choices:
        expected = ", ".join(choices[:-1]) + " or " + choices[-1]
        raise ImproperlyConfigured(f"{name}={value!r}: expected {expected}")
    return value


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in (os.getenv(name) or default).split(",") if item.strip()]


ENDPOINT_NAME = re.compile(r"[a-z0-9_-]+")
OIDC_NAME = re.compile(r"[A-Za-z0-9_-]+")


def env_pairs(name: str, pattern: re.Pattern, what: str) -> list[tuple[str, str]]:
    """`name=url` pairs, comma-separated, in the order given: each name new (whatever its case) and
    matching `pattern`, each URL http:// or https:// (`what` says which URL, in the error)."""
    pairs: list[tuple[str, str]] = []
    for pair in env_list(name, ""):
        key, _, url = (part.strip() for part in pair.partition("="))
        if not pattern.fullmatch(key) or key.lower() in {seen.lower() for seen, _ in pairs}:
            raise ImproperlyConfigured(f"{name}={os.getenv(name)!r}: {key!r} is not a new name of {pattern.pattern}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ImproperlyConfigured(f"{name}={os.getenv(name)!r}: {key}'s {what} must be http:// or https://")
        pairs.append((key, url.rstrip("/")))
    return pairs


def env_endpoints(name: str) -> dict[str, dict[str, str]]:
    """CHAT_ENDPOINTS: `name=url` pairs, comma-separated; each endpoint's key from CHAT_ENDPOINT_<NAME>_KEY.

    Returns {name: {"url": ..., "key": ...}} in the order given.
    """
    return {
        endpoint: {"url": url, "key": os.getenv(f"CHAT_ENDPOINT_{endpoint.upper().replace('-', '_')}_KEY", "")}
        for endpoint, url in env_pairs(name, ENDPOINT_NAME, "URL")
    }


def env_oidc(name: str) -> list[dict]:
    """CHATSITE_OIDC: `name=issuer-url` pairs, comma-separated; each provider's client id and secret from
    CHATSITE_OIDC_<NAME>_CLIENT_ID and _SECRET. Returns them as allauth's openid_connect APPS."""
    apps: list[dict] = []
    for provider, issuer in env_pairs(name, OIDC_NAME, "issuer"):
        prefix = f"{name}_{provider.upper().replace('-', '_')}"
        client_id = os.getenv(f"{prefix}_CLIENT_ID", "")
        if not client_id:
            raise ImproperlyConfigured(f"{name}: {provider} needs {prefix}_CLIENT_ID (and {prefix}_SECRET)")
        apps.append(
            {
                "provider_id": provider.lower(),
                "name": provider,
                "client_id": client_id,
                "secret": os.getenv(f"{prefix}_SECRET", ""),
                "settings": {"server_url": issuer, "oauth_pkce_enabled": True},
            }
        )
    return apps


def drop_traceback(record) -> bool:
    """django.security records (DisallowedHost, ...) are expected noise: keep the message only."""
    if record.name.startswith("django.security."):
        record.exc_info = None
        record.exc_text = None
    return True


def secret_key() -> str:
    """The signing key: DJANGO_SECRET_KEY, else one generated once into var/."""
    if os.getenv("DJANGO_SECRET_KEY"):
        return os.environ["DJANGO_SECRET_KEY"]
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        # Write, then hard-link into place: link() fails if another process
        # got there first, so processes starting together agree on one key.
        tmp = path.with_suffix(f".{os.getpid()}")
        tmp.write_text(secrets.token_urlsafe(50))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()


def database(url: str) -> dj_database_url.DBConfig:
    try:
        config = dj_database_url.parse(url, conn_max_age=60, conn_health_checks=True)
    except (ValueError, KeyError) as exc:
        raise ImproperlyConfigured(f"DATABASE_URL={url!r}: {exc}") from None
    if not config.get("ENGINE"):
        raise ImproperlyConfigured(f"DATABASE_URL={url!r}: unknown database scheme")
    if config["ENGINE"] == "django.db.backends.sqlite3":
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        # Connections are kept for CONN_MAX_AGE, as for PostgreSQL: a new SQLite
        # connection reads the schema before its first query, 1.2 ms of every
        # database_sync_to_async call otherwise (docs/models.md, "Measured").
        # SQLite is shared by the web threads and the consumer's database
        # calls; a generous timeout turns lock contention into a short wait.
        # IMMEDIATE transactions take the write lock when they begin, so two
        # writers queue on the timeout instead of one failing at once with
        # "database is locked" (a deferred read lock cannot be upgraded).
        config["OPTIONS"] = {
            "timeout": env_int("CHAT_DB_LOCK_TIMEOUT_S", 20, maximum=3600),
            "transaction_mode": "IMMEDIATE",
        }
    elif config["ENGINE"] == "django.db.backends.postgresql":
        # No query may run longer (SQLite gets the same guard in chatsite/db.py).
        timeout_ms = env_int("CHAT_DB_STATEMENT_TIMEOUT_S", 30, maximum=86_400) * 1000
        config.setdefault("OPTIONS", {})["options"] = f"-c statement_timeout={timeout_ms}"
    return config


def channel_layers(redis_url: str | None) -> dict:
    if not redis_url:
        return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    if not redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(f"REDIS_URL={redis_url!r}: expected a redis:// URL")
    return {
        "default": {
            "BACKEND": "chatsite.layers.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": redis_url,
                        # redis-py 8 reads with a 5 s socket timeout by default,
                        # the same 5 s that channels_redis blocks in BZPOPMIN:
                        # an idle receive then fails now and then with "Timeout
                        # reading", which looks like Redis going away. Read
                        # timeouts well above the 5 s; connect fails fast.
                        "socket_timeout": 15,
                        "socket_connect_timeout": 3,
                    }
                ],
                # A streaming reply sends many small frames; the defaults
                # (100 messages, 60 s) drop tokens for a slow browser.
                "capacity": 1000,
                # An unread message (a request no worker took, a frame for a
                # socket that is gone) is dropped after this many seconds.
                "expiry": 30,
                # Group membership lapses after this long. A tab stays open
                # for hours, and a lapsed socket would silently stop getting
                # frames: keep Channels' default of a day, not an hour.
                "group_expiry": 86400,
            },
        }
    }


SECRET_KEY = secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
CSRF_FAILURE_VIEW = "chatsite.errors.csrf_failure"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    # Single sign-on (conversations/sso.py): allauth's accounts are needed by its social accounts.
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "conversations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files are answered here, before the session and the rest:
    # compressed, with hashed names cached for a year (and nosniff, above).
    # whitenoise's own middleware is sync-only, which would push every
    # async view (the API's streams) into a thread: see chatsite.middleware.
    "chatsite.middleware.StaticFiles",
    "chatsite.middleware.no_store",
    "csp.middleware.CSPMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # An account waiting for approval sees one page (conversations/accounts.py).
    "conversations.accounts.waiting_room",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"
WSGI_APPLICATION = "chatsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "conversations.context_processors.site",
            ],
        },
    },
]

DATABASE_URL = os.getenv("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASES = {"default": database(DATABASE_URL)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.getenv("REDIS_URL") or None
CHANNEL_LAYERS = channel_layers(REDIS_URL)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "index"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
# `collectstatic` (run by `make run`, and once per test session) hashes,
# compresses and rewrites ES module imports; whitenoise serves the result.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "chatsite.storage.StaticStorage"},
}

# ---- security ----

# The page loads scripts, styles, fonts and images from this site only, and
# has no inline script or style; its WebSocket goes to this site too.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# CHATSITE_HTTPS=1: the site is served over HTTPS by a proxy (docs/deploy.md)
# that sets X-Forwarded-Proto and X-Forwarded-For.
CHATSITE_HTTPS = env_bool("CHATSITE_HTTPS", False)
if CHATSITE_HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # health checks come over plain HTTP
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = 365 * 24 * 3600
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("CHATSITE_HSTS_PRELOAD", False)
# Preloading is a commitment an operator makes to the browsers' list on purpose.
SILENCED_SYSTEM_CHECKS = ["security.W021"]

# Login throttling (django-axes): 5 wrong passwords for one username from one
# address lock that pair out for 15 minutes; a right one resets the count.
# `manage.py axes_reset` (or axes_reset_username NAME) lifts a lockout.
# CHATSITE_PASSWORD_LOGIN=0 (with single sign-on): no backend takes a password (conversations/sso.py).
CHATSITE_PASSWORD_LOGIN = env_bool("CHATSITE_PASSWORD_LOGIN", True)
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend" if CHATSITE_PASSWORD_LOGIN else "conversations.sso.NoPasswords",
]
AXES_FAILURE_LIMIT = env_int("CHATSITE_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("CHATSITE_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "chatsite.middleware.client_ip"
AXES_LOCKOUT_CALLABLE = "conversations.views.locked_out"
AXES_VERBOSE = False

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    # A bad Host header (and the like) is logged as one line, not a traceback.
    "filters": {"one_line": {"()": "django.utils.log.CallbackFilter", "callback": drop_traceback}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["one_line"]}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}

# Chatsite's own settings.
# Who may make an account: `open`; `approval` (new accounts wait until staff approve them in the
# admin); `closed`. CHATSITE_ALLOW_SIGNUP=0, the older setting, still closes it.
CHATSITE_SIGNUP = env_choice("CHATSITE_SIGNUP", "open", ("open", "approval", "closed"))
if not env_bool("CHATSITE_ALLOW_SIGNUP", True):
    CHATSITE_SIGNUP = "closed"
CHATSITE_ALLOW_SIGNUP = CHATSITE_SIGNUP != "closed"
# Single sign-on with OpenID Connect (conversations/sso.py, docs/deploy.md): providers from the
# environment here, or from the admin's Social applications. allauth runs the flow, with PKCE.
SOCIALACCOUNT_PROVIDERS = {"openid_connect": {"OAUTH_PKCE_ENABLED": True, "APPS": env_oidc("CHATSITE_OIDC")}}
SOCIALACCOUNT_ADAPTER = "conversations.sso.SocialAdapter"
SOCIALACCOUNT_AUTO_SIGNUP = True
# An account the provider vouches for the email of signs in to the local account with that email.
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
SOCIALACCOUNT_STORE_TOKENS = False
# Chatsite sends no mail: allauth's accounts are sign-in records, their emails as the provider says.
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_LOGIN_METHODS = {"username"}
ACCOUNT_SIGNUP_FIELDS = ["username*", "email", "password1*", "password2*"]
# Share links (/s/<token>/) open without logging in.
CHATSITE_SHARE_PUBLIC = env_bool("CHATSITE_SHARE_PUBLIC", False)
CHAT_INFERENCE = env_choice("CHAT_INFERENCE", "local", ("local", "worker", "none"))
if CHAT_INFERENCE == "worker" and not REDIS_URL:
    raise ImproperlyConfigured("CHAT_INFERENCE='worker': needs REDIS_URL")
CHAT_MODEL = os.getenv("CHAT_MODEL") or "smollm2-135m-instruct"
CHAT_DEVICE = env_choice("CHAT_DEVICE", "auto", ("auto", "cuda", "mps", "cpu"))
CHAT_DTYPE = env_choice("CHAT_DTYPE", "auto", ("auto", "float32", "float16", "bfloat16"))
# Weight quantization: auto = int4 weights, int8 head, bf16 activations on a CPU serving a 4/8-bit GGUF.
CHAT_QUANT = env_choice("CHAT_QUANT", "auto", ("auto", "none", "int8", "int4"))
CHAT_MODEL_CACHE = Path(os.getenv("CHAT_MODEL_CACHE") or VAR_DIR / "models")
CHAT_MAX_BATCH = env_int("CHAT_MAX_BATCH", 8, minimum=1, maximum=256)
CHAT_MAX_QUEUE = env_int("CHAT_MAX_QUEUE", 32, minimum=0, maximum=10_000)
# Prompt + completion tokens a user may spend per UTC day (web, API and
# batch_prompts together); 0 = no limit. Staff set per-user overrides in the admin.
CHAT_USER_DAILY_TOKENS = env_int("CHAT_USER_DAILY_TOKENS", 0, minimum=0)
# Threads for the model's CPU work; 0 = auto: one thread or one per core,
# whichever decodes faster by the wall clock, re-measured as it runs.
CHAT_THREADS = env_int("CHAT_THREADS", 0, minimum=0, maximum=1024)
# How often a growing reply is written to the database (seconds), so a crash
# or a dropped client loses at most this much text.
CHAT_SAVE_INTERVAL = float(env_int("CHAT_SAVE_INTERVAL_MS", 1000, maximum=60_000)) / 1000
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 16_000, minimum=1)
# A system prompt is sent with every message of its chat: capped at creation.
CHAT_MAX_SYSTEM_PROMPT_CHARS = env_int("CHAT_MAX_SYSTEM_PROMPT_CHARS", 8_000, minimum=1)
# The longest one SQL statement may run, in seconds (0 = no limit): a query
# whose cost grows with one user's data cannot hold the database (chatsite/db.py).
CHAT_DB_STATEMENT_TIMEOUT = env_int("CHAT_DB_STATEMENT_TIMEOUT_S", 30, maximum=86_400)
# The largest file /c/import/ takes. Uploads past FILE_UPLOAD_MAX_MEMORY_SIZE
# (2.5 MB) wait on disk and are parsed as a stream, so memory stays bounded.
CHAT_IMPORT_MAX_MB = env_int("CHAT_IMPORT_MAX_MB", 64, minimum=1, maximum=4096)
# A reply nobody watches any more (every tab closed) is stopped after this
# many seconds; a reload or a reconnect within it picks the reply back up.
CHAT_ORPHAN_GRACE = float(env_int("CHAT_ORPHAN_GRACE_S", 30, maximum=86_400))
# After a chat's first reply its model writes the chat's title, as background work (docs/history.md).
CHAT_TITLES = env_bool("CHAT_TITLES", True)
# A chat longer than its model's context: its oldest turns are summarised by the model, not left out
# without a word (docs/history.md, "Summaries").
CHAT_SUMMARIES = env_bool("CHAT_SUMMARIES", True)
# Temporary chats (docs/history.md): never listed, searched or exported, and deleted
# once no tab has had one open for this many seconds; 0 refuses them.
CHAT_TEMPORARY_CHATS = env_bool("CHAT_TEMPORARY_CHATS", True)
CHAT_TEMPORARY_GRACE = float(env_int("CHAT_TEMPORARY_GRACE_S", 60, minimum=1, maximum=86_400))
# A deleted chat can be brought back (Undo) for this many seconds; then it is gone.
CHAT_DELETE_UNDO = float(env_int("CHAT_DELETE_UNDO_S", 300, minimum=1, maximum=86_400))
# Worker mode (CHAT_INFERENCE=worker). A live reply whose lease is not renewed
# for this many seconds (its worker died, or no worker took the request) is
# ended by a reaper in any web process or worker; workers renew every fifth of
# it (2 s by default) and /healthz wants a worker seen within it.
CHAT_WORKER_TIMEOUT = float(env_int("CHAT_WORKER_TIMEOUT_S", 10, minimum=1, maximum=3600))
# SIGTERM / SIGINT on a web process or a worker: new turns are refused with
# `busy`, live replies get this many seconds to finish, the rest are stopped
# as interrupted (docs/deploy.md).
CHAT_SHUTDOWN_GRACE = float(env_int("CHAT_SHUTDOWN_GRACE_S", 10, maximum=3600))
# OpenAI-compatible endpoints beside the local model (docs/models.md): `name=url` pairs,
# each key from CHAT_ENDPOINT_<NAME>_KEY. Staff add more in the admin.
CHAT_ENDPOINTS = env_endpoints("CHAT_ENDPOINTS")
# The longest wait for an endpoint's first token, and between two of its
# tokens, before the turn fails with model_unavailable.
CHAT_ENDPOINT_TIMEOUT = float(env_int("CHAT_ENDPOINT_TIMEOUT_S", 60, minimum=1, maximum=3600))
# The model of a new chat; empty: the local model, else the first model offered.
CHAT_DEFAULT_MODEL = os.getenv("CHAT_DEFAULT_MODEL", "").strip()
