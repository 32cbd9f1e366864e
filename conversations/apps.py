from django.apps import AppConfig


class ConversationsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "conversations"

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from chatsite import db

        from .live import consumers

        db.install()  # the statement timeout on SQLite (chatsite/db.py)
        # A logout closes that session's chat sockets: they may not send another frame.
        user_logged_out.connect(consumers.logged_out, dispatch_uid="conversations.logged_out")
