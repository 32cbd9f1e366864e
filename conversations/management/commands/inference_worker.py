"""python manage.py inference_worker: serve replies for CHAT_INFERENCE=worker web processes.

See conversations/live/inference_worker.py for how it works and docs/deploy.md for running it.
"""

import logging

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from conversations.live import process, runners, state
from conversations.live.inference_worker import InferenceWorkerServer

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Load the model and generate the replies that web processes in CHAT_INFERENCE=worker mode "
        "hand over through Redis. Run as many as you like; SIGTERM stops one gracefully."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--name", help="how this worker is listed in /admin and logs (default: HOST:PID; must be unique)"
        )

    def handle(self, *args, name: str | None = None, **options) -> None:
        if not settings.REDIS_URL:
            raise CommandError("inference_worker needs REDIS_URL (the channel layer the web processes use)")
        problem = process.redis_problem()
        if problem:
            raise CommandError(problem)
        try:
            engine = process.load_model()
        except process.LOAD_ERRORS as exc:
            raise CommandError(f"cannot load CHAT_MODEL={settings.CHAT_MODEL!r}: {exc}") from None
        models = process.registry(engine)
        models.start()  # the endpoints' models: their turns run in the workers too
        # This process's live state: replies.finish() keeps its background retries
        # there (a final save the database refused). Without one, such a failure
        # raised NotStarted instead, and took the worker's reaper down with it.
        state.install(state.Live(runner=runners.Runner(models)))
        server = InferenceWorkerServer(models, name=name)
        info = engine.info
        logger.info(
            "inference worker %s ready: %s on %s (%s), up to %d replies at once",
            server.name,
            info.model_name,
            info.device,
            info.dtype,
            engine.config.max_batch_size,
        )
        try:
            server.run()
        finally:
            engine.close(timeout=30)
        logger.info("inference worker %s stopped", server.name)
