from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "conversations"

    def ready(self) -> None:
        from chatsite import db

        db.install()  # the statement timeout on SQLite (chatsite/db.py)
