"""manage.py create_api_key USERNAME [--name NAME]: a new API key of that user, printed as the last line."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from conversations.api import keys as apikeys


class Command(BaseCommand):
    help = "Create an API key for USERNAME; the key is printed as the last line (it is not stored)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="command line", help="what the key is for (default: command line)")

    def handle(self, *args, username: str, name: str, **options) -> None:
        try:
            user = get_user_model().objects.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        key, raw = apikeys.create(user, name)
        self.stderr.write(f"API key {key.name!r} ({key.prefix}…) for {username}; it is shown only now:")
        self.stdout.write(raw)
