"""The data of Chatsite: one Django app's models, a module per concern.

They stay in the one `conversations` app, so table names and migrations are
those of the single models.py they came from.
"""

from .accounts import PendingAccount
from .assistants import Assistant, AssistantQuerySet
from .chat import Conversation, ConversationQuerySet, Message, unstorable
from .endpoints import Endpoint, ModelOption
from .keys import ApiKey, ApiKeyQuerySet
from .review import DailyUsage, Feedback, GroupQuota, QuotaOverride, Reservation, StaffRead
from .shares import Share
from .summaries import Summary
from .workers import InferenceWorker

__all__ = [
    "ApiKey",
    "ApiKeyQuerySet",
    "Assistant",
    "AssistantQuerySet",
    "Conversation",
    "ConversationQuerySet",
    "DailyUsage",
    "Endpoint",
    "Feedback",
    "GroupQuota",
    "InferenceWorker",
    "Message",
    "ModelOption",
    "PendingAccount",
    "QuotaOverride",
    "Reservation",
    "Share",
    "StaffRead",
    "Summary",
    "unstorable",
]
