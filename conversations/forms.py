"""Forms for pages: sign-up, new conversation, rename."""

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import UserCreationForm
from django.db import transaction

from inference.params import GenerationParams, InvalidParams

from . import accounts
from .models import Conversation


class SignupForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        model = get_user_model()
        fields = ("username",)

    @transaction.atomic
    def save(self, commit: bool = True):
        user = super().save(commit=commit)
        if commit:
            accounts.admit(user)  # the first account runs the site; under approval the others wait
        return user


class ConversationForm(forms.ModelForm):
    """A new conversation's system prompt and generation parameters."""

    class Meta:
        model = Conversation
        fields = ("system_prompt", "temperature", "top_p", "max_new_tokens", "repetition_penalty")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in self.Meta.fields:
            self.fields[name].required = False

    def clean_system_prompt(self) -> str:
        text = self.cleaned_data.get("system_prompt") or ""
        limit = settings.CHAT_MAX_SYSTEM_PROMPT_CHARS
        if len(text) > limit:
            raise forms.ValidationError(
                f"A system prompt can have at most {limit:,} characters (this one has {len(text):,})."
            )
        return text

    def clean(self) -> dict:
        cleaned = super().clean()
        given = {
            name: cleaned[name]
            for name in ("temperature", "top_p", "max_new_tokens", "repetition_penalty")
            if cleaned.get(name) is not None
        }
        try:
            params = GenerationParams.from_dict(given)
        except InvalidParams as exc:
            raise forms.ValidationError(str(exc)) from None
        cleaned.update(params.to_dict())
        cleaned["system_prompt"] = cleaned.get("system_prompt") or ""
        return cleaned


class RenameForm(forms.Form):
    title = forms.CharField(max_length=200, strip=True)
