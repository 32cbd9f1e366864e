"""Exceptions raised by the inference package.

Callers at the boundaries (the WebSocket consumer, the management commands, the
CLI) catch these and turn them into an error frame, a message status or a
one-line report; nothing inside ``inference/`` prints them.
"""


class InferenceError(Exception):
    """Base class of every error the inference package raises on purpose."""


class InvalidParams(InferenceError, ValueError):
    """A generation parameter or a request's messages are malformed or out of range.

    The message is meant for the end user, e.g. "temperature must be between 0 and 2".
    """


class InvalidConfig(InferenceError, ValueError):
    """An :class:`~inference.config.EngineConfig` value is unknown, e.g. ``device='tpu'``."""


class QueueFull(InferenceError):
    """The engine already holds as many requests as it may (running batch plus queue)."""


class ModelLoadError(InferenceError):
    """The model or tokenizer could not be found, converted or loaded."""


class PromptTooLong(InferenceError):
    """The system prompt and the newest user turn alone leave no room in the context window."""


class EngineClosed(InferenceError):
    """The engine was closed; it takes no new requests."""


class ModelUnavailable(InferenceError):
    """The server behind a model cannot be reached, answers an error, or stopped answering."""
