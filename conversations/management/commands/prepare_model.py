"""python manage.py prepare_model: convert and quantize the configured model into CHAT_MODEL_CACHE now.

The first start of a process otherwise does it (the packaged GGUF's
conversion and the CPU's quantization take half a minute), and every process
started before the cache exists does it at once: a site and its workers, or
the test suite's servers. `make install` runs it, so `make run` starts in
seconds.
"""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from conversations.live import process


class Command(BaseCommand):
    help = (
        "Load CHAT_MODEL once, so that its conversion and quantization are cached in CHAT_MODEL_CACHE "
        "and the site and its workers start quickly. Nothing to do with CHAT_INFERENCE=none."
    )

    def handle(self, *args, **options) -> None:
        if settings.CHAT_INFERENCE == "none":
            self.stdout.write("CHAT_INFERENCE=none: no local model to prepare")
            return
        from inference.loading import load_model

        try:
            loaded = load_model(process.engine_config())
        except process.LOAD_ERRORS as exc:
            raise CommandError(f"cannot load CHAT_MODEL={settings.CHAT_MODEL!r}: {exc}") from None
        self.stdout.write(
            f"{loaded.name} is ready in {settings.CHAT_MODEL_CACHE} "
            f"({loaded.device}, {loaded.quant if loaded.quant != 'none' else loaded.dtype}; "
            f"loaded in {loaded.load_seconds:.1f} s)"
        )
