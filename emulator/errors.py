"""Errors in the service's shape: ``{"error": {"code": ..., "message": ..., "details": [...]}}``.

Codes and messages follow the ones observed from Power BI (see the reference's error table):
``ItemNotFound`` for tables and non-push datasets, ``PowerBIEntityNotFound`` for unknown
datasets and groups, ``BadRequest`` with ``details`` for schema and value errors,
``TokenExpired`` (403), and 429 with ``Retry-After`` for every throttle.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer. Raise it anywhere in a handler; the middleware renders it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


def bad_request(message: str, target: str = "request") -> ApiError:
    """A 400 in the service's ``BadRequest`` shape, with the reason in ``details``."""
    return ApiError(
        400, "BadRequest", "Bad Request", details=[{"message": message, "target": target}]
    )


def dataset_not_found(dataset_id: str) -> ApiError:
    return ApiError(404, "PowerBIEntityNotFound", f"Dataset {dataset_id} was not found.")


def group_not_found(group_id: str) -> ApiError:
    return ApiError(404, "PowerBIEntityNotFound", f"Workspace {group_id} was not found.")


def table_not_found(table: str, dataset_id: str) -> ApiError:
    return ApiError(404, "ItemNotFound", f"Table '{table}' not found in dataset '{dataset_id}'")


def not_push(dataset_id: str) -> ApiError:
    return ApiError(404, "ItemNotFound", f"Dataset {dataset_id} is not Push API dataset.")
