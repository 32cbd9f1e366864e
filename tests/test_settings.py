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
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("env, expected", [
    ({"CHAT_DEVICE": "tpu"}, "CHAT_DEVICE='tpu': expected auto, cuda, mps or cpu"),
    ({"CHAT_DTYPE": "int3"}, "CHAT_DTYPE='int3'"),
    ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG='maybe': expected 1 or 0"),
    ({"DATABASE_URL": "nosuchdb://x"}, "DATABASE_URL='nosuchdb://x'"),
    ({"REDIS_URL": "http://localhost"}, "REDIS_URL='http://localhost'"),
    ({"CHAT_INFERENCE": "worker"}, "CHAT_INFERENCE='worker': needs REDIS_URL"),
    ({"CHAT_MAX_BATCH": "0"}, "CHAT_MAX_BATCH='0'"),
])
def test_a_bad_setting_is_one_line(env, expected):
    result = manage(env, "check")
    assert result.returncode == 1
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_defaults_run():
    result = manage({}, "check")
    assert result.returncode == 0, result.stderr
