"""python manage.py prepare_model: the model's conversion and quantization are cached before any server starts."""

import pytest
from django.core.management import CommandError, call_command

from inference.quant import cache_path


def test_it_caches_the_quantized_model_and_says_so(tiny_model_dir, tmp_path, settings, capsys):
    settings.CHAT_MODEL, settings.CHAT_DEVICE, settings.CHAT_QUANT = str(tiny_model_dir), "cpu", "int8"
    settings.CHAT_MODEL_CACHE = tmp_path
    call_command("prepare_model")
    assert cache_path(tiny_model_dir, tmp_path, "int8").is_file()
    assert f"is ready in {tmp_path} (cpu, int8;" in capsys.readouterr().out


def test_a_site_without_a_local_model_has_nothing_to_prepare(settings, capsys):
    settings.CHAT_INFERENCE, settings.CHAT_MODEL = "none", "/nowhere"
    call_command("prepare_model")
    assert "no local model to prepare" in capsys.readouterr().out


def test_a_model_that_cannot_load_is_named(settings, tmp_path):
    settings.CHAT_MODEL, settings.CHAT_DEVICE = str(tmp_path / "missing"), "cpu"
    with pytest.raises(CommandError, match="cannot load CHAT_MODEL="):
        call_command("prepare_model")
