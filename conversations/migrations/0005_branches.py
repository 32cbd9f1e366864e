"""Messages form a tree (`parent`) with one active path (`Conversation.active_leaf`).

Every existing conversation becomes a single path, oldest message first, its
last message the active leaf: nothing is lost and every page reads as before.
"""

import django.db.models.deletion
from django.db import migrations, models


def chain_existing(apps, schema_editor):
    Conversation = apps.get_model("conversations", "Conversation")
    Message = apps.get_model("conversations", "Message")
    for conversation_id in Conversation.objects.values_list("id", flat=True).iterator():
        ids = list(
            Message.objects.filter(conversation_id=conversation_id)
            .order_by("created_at", "id")
            .values_list("id", flat=True)
        )
        links = [Message(id=child, parent_id=parent) for parent, child in zip(ids, ids[1:])]
        Message.objects.bulk_update(links, ["parent"], batch_size=500)
        if ids:
            Conversation.objects.filter(id=conversation_id).update(active_leaf_id=ids[-1])


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0004_apikey"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="children",
                to="conversations.message",
            ),
        ),
        migrations.AddField(
            model_name="conversation",
            name="active_leaf",
            field=models.ForeignKey(
                blank=True,
                editable=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="conversations.message",
            ),
        ),
        migrations.RunPython(chain_existing, migrations.RunPython.noop),
    ]
