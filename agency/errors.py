"""Domain errors. ``user_message`` is always safe to show to a person."""
from __future__ import annotations


class AgencyError(Exception):
    """Base of every error the core raises on purpose."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class SettingsError(AgencyError):
    """A missing or invalid setting; the message names the key."""


class CommandError(AgencyError):
    """A command that could not be parsed or is not allowed."""


class PlanError(AgencyError):
    """A work plan that cannot run; ``reasons`` lists every problem."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("The plan is invalid:\n" + "\n".join(f"- {r}" for r in reasons))
        self.reasons = reasons


class NotFoundError(AgencyError):
    """An unknown project, handle, task or approval."""


class PermissionDeniedError(AgencyError):
    """The actor may not do this."""


class LLMError(AgencyError):
    """A model call failed after its retries."""


class LLMOutputError(LLMError):
    """The model's reply did not validate against the schema, even after the repair round."""

    def __init__(self, schema_name: str, errors: str, raw: str) -> None:
        super().__init__(f"The model's {schema_name} did not validate after a repair round: {errors}")
        self.schema_name = schema_name
        self.errors = errors
        self.raw = raw


class TransientModelError(LLMError):
    """A failure worth retrying: timeout, 429, 5xx, dropped connection.

    ``retry_after`` carries the server's Retry-After in seconds when it sent one.
    """

    def __init__(self, user_message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(user_message)
        self.retry_after = retry_after
        self.status = status


class ModelRefusedModeError(LLMError):
    """The endpoint refused a structured-output mode (e.g. HTTP 400/500 on json_schema)."""


class BudgetExceededError(AgencyError):
    """A project's budget is spent; it pauses before the next model call."""
