"""A bad setting stops start-up with one clear line naming the variable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def manage(env: dict, *args: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("CHAT", "DJANGO", "DATABASE", "REDIS"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"CHAT_DEVICE": "tpu"}, "CHAT_DEVICE='tpu': expected auto, cuda, mps or cpu"),
        ({"CHAT_DTYPE": "int3"}, "CHAT_DTYPE='int3'"),
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG='maybe': expected 1 or 0"),
        ({"DATABASE_URL": "nosuchdb://x"}, "DATABASE_URL='nosuchdb://x'"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL='http://localhost'"),
        ({"CHAT_INFERENCE": "worker"}, "CHAT_INFERENCE='worker': needs REDIS_URL"),
        ({"CHAT_MAX_BATCH": "0"}, "CHAT_MAX_BATCH='0'"),
        ({"CHAT_THREADS": "two"}, "CHAT_THREADS='two'"),
        ({"CHATSITE_SIGNUP": "maybe"}, "CHATSITE_SIGNUP='maybe': expected open, approval or closed"),
        ({"CHATSITE_OIDC": "key cloak=https://sso"}, "CHATSITE_OIDC='key cloak=https://sso': 'key cloak' is not"),
        ({"CHATSITE_OIDC": "kc=https://sso.example.com"}, "CHATSITE_OIDC: kc needs CHATSITE_OIDC_KC_CLIENT_ID"),
    ],
)
def test_a_bad_setting_is_one_line(env, expected):
    result = manage(env, "check")
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_defaults_run():
    result = manage({}, "check")
    assert result.returncode == 0, result.stderr


def test_the_engine_config_comes_from_settings(settings, tmp_path):
    from conversations.live import process

    settings.CHAT_MODEL, settings.CHAT_DEVICE, settings.CHAT_DTYPE = str(tmp_path), "cpu", "float32"
    settings.CHAT_MODEL_CACHE, settings.CHAT_MAX_BATCH, settings.CHAT_MAX_QUEUE = tmp_path, 3, 5
    settings.CHAT_THREADS = 1
    config = process.engine_config()
    assert (config.model, config.device, config.dtype, config.cache_dir) == (str(tmp_path), "cpu", "float32", tmp_path)
    assert (config.max_batch_size, config.max_queue, config.num_threads) == (3, 5, 1)


def test_without_redis_url_the_site_never_imports_redis(tmp_path):
    # The in-memory layer needs none of it; redis would cost every such server 5 MB.
    code = (
        "import sys, django; django.setup();"
        "import chatsite.routing, conversations.live.consumers, conversations.live.shutdown, conversations.urls;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'channels_redis')))"
    )
    env = {"DJANGO_SETTINGS_MODULE": "chatsite.settings", "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    result = manage(env, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_older_sign_up_switch_still_closes_sign_up(tmp_path):
    code = "from django.conf import settings; print(settings.CHATSITE_SIGNUP, settings.CHATSITE_ALLOW_SIGNUP)"
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "CHATSITE_ALLOW_SIGNUP": "0"}
    result = manage(env | {"CHATSITE_SIGNUP": "approval"}, "shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == ["closed", "False"]
