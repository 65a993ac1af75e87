"""The one error hierarchy of the bundle.

::

    PushError
    ├── TransientError          retry later: 429 (retry_after), 500/502/503/504, connect/read errors
    └── PermanentError          retrying cannot help
        ├── ValidationError     a row or payload does not fit the schema or the limits
        ├── NotFoundError       dataset / table / workspace missing and no definition to create it
        ├── AuthError           401/403 (token, tenant setting, workspace role)
        └── ConfigError         a setting is missing or malformed; the message names it

Third-party exceptions are translated into these in one place per library (``powerbi`` for
HTTP, ``auth`` for token libraries), always with ``raise ... from exc``. Messages never carry a
token or a secret.
"""

from __future__ import annotations

from dataclasses import dataclass


class PushError(Exception):
    """Base of every error the bundle raises on purpose.

    ``status`` is the HTTP status when there was one, ``code`` the service's error code
    (``error.code`` of its body) and ``request_id`` its ``RequestId`` header, for support.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        extra = [
            f"{name}={value}"
            for name, value in (
                ("status", self.status),
                ("code", self.code),
                ("request_id", self.request_id),
            )
            if value is not None
        ]
        return f"{self.message} ({', '.join(extra)})" if extra else self.message


class TransientError(PushError):
    """Retrying later may succeed.

    ``retry_after`` is the wait the service asked for, in seconds, when it gave one.
    ``maybe_delivered`` is True when the request may have reached the service before it failed
    (a timeout or a lost response after the body was sent): retrying a non-idempotent call such
    as Add Rows may then duplicate rows.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        maybe_delivered: bool = False,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id)
        self.retry_after = retry_after
        self.maybe_delivered = maybe_delivered


class PermanentError(PushError):
    """Retrying cannot help: the input, the target or the configuration must change."""


@dataclass(frozen=True)
class RowProblem:
    """Why one row was refused: its position in the input, the column (if any), the reason."""

    index: int
    reason: str
    column: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "column": self.column, "reason": self.reason}


class ValidationError(PermanentError):
    """A row or payload does not fit the schema or the limits; ``problems`` lists rows."""

    def __init__(
        self,
        message: str,
        *,
        problems: list[RowProblem] | None = None,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id)
        self.problems = problems or []


class NotFoundError(PermanentError):
    """The dataset, table or workspace does not exist and there is no definition to create it."""


class ForbiddenError(PermanentError):
    """The caller may not write to this target (``ALLOWED_TARGETS``)."""


class AuthError(PermanentError):
    """The service refused the identity (401/403): token, tenant setting or workspace role.

    ``cause``, when the refusal is a known one (``shared.destinations.powerbi.refusal_cause``,
    decided where the request's URL is known): ``"token_expired"``, ``"tenant_switch"``,
    ``"my_workspace_app"`` or ``"not_authorized"``."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        cause: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, request_id=request_id)
        self.cause = cause


class ConfigError(PermanentError):
    """A setting is missing or malformed. ``setting`` names it."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"setting {setting}: {problem}")
        self.setting = setting
        self.problem = problem


class LedgerUnavailable(TransientError):
    """The shared pacing ledger cannot be read or written (storage unreachable, refused,
    throttled): pacing falls back to this process's share (shared.engine.shared_governor)."""


class LedgerConflict(Exception):
    """A shared pacing record changed since it was read (ETag mismatch, or created meanwhile):
    read it again and decide again. Not a failure."""
