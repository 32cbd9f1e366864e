from django.urls import path

from . import views
from .assistants import views as assistant_views
from .endpoints import views as model_views
from .review import views as review_views
from .shares import views as share_views

urlpatterns = [
    path("", views.index, name="index"),
    path("c/new/", views.new, name="new"),
    path("c/import/", views.import_conversations, name="import"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("c/<uuid:conversation_id>/rename/", views.rename, name="rename"),
    path("c/<uuid:conversation_id>/delete/", views.delete, name="delete"),
    path("c/<uuid:conversation_id>/restore/", views.restore, name="restore"),
    path("c/<uuid:conversation_id>/share/", share_views.create, name="share"),
    path("c/<uuid:conversation_id>/unshare/", share_views.unshare, name="unshare"),
    path("c/<uuid:conversation_id>/archive/", views.archive, name="archive"),
    path("c/<uuid:conversation_id>/unarchive/", views.unarchive, name="unarchive"),
    path("c/<uuid:conversation_id>/pin/", views.pin, name="pin"),
    path("c/<uuid:conversation_id>/unpin/", views.unpin, name="unpin"),
    path("c/<uuid:conversation_id>/export.json", views.export_json, name="export_json"),
    path("c/<uuid:conversation_id>/export.md", views.export_markdown, name="export_markdown"),
    path("api/conversations/", views.api_conversations, name="api_conversations"),
    path("api/conversations/<uuid:conversation_id>/", views.api_conversation, name="api_conversation"),
    path("api/messages/<int:message_id>/feedback/", review_views.feedback, name="feedback"),
    path("api/usage/", review_views.usage, name="usage"),
    path("api/models/", model_views.models, name="api_models_list"),
    path("api/assistants/", assistant_views.api_list, name="api_assistants"),
    path("api/assistants/<int:assistant_id>/", assistant_views.api_detail, name="api_assistant"),
    path("assistants/", assistant_views.page, name="assistants"),
    path("assistants/<int:assistant_id>/", assistant_views.page, name="assistant_edit"),
    path("assistants/<int:assistant_id>/delete/", assistant_views.delete, name="assistant_delete"),
]
