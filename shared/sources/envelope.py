"""Parsing what senders send: JSON bodies, NDJSON, and row envelopes.

An envelope names a target and carries rows, inline or by a claim-check reference:
``{"dataset": "SalesMarketing", "table": "Product", "workspace": "<optional>", "rows": [...]}``
or ``{"dataset", "table", "workspace"?, "blob": "<container/name>"}``, either with an optional
``"profile": {...}`` (an ingest profile override for these rows) and an optional
``"destinations": ["eventhouse"]`` (deliver to these of the table's destinations only: a
message re-sent for the destinations that failed while the others delivered, issue 18). Such a
re-send also carries ``"resent": true``: its rows refused by validation were dead-lettered by
the first delivery, so they are not dead-lettered twice (the bundle sets it on its own
re-sends; an HTTP sender may not). Errors are :class:`~shared.errors.ValidationError` s whose
message a person can act on: the JSON parse position, or the field that is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared.contracts import PushResult, Target
from shared.errors import ValidationError


class BodyError(ValidationError):
    """The body cannot be read as what the endpoint expects; ``field`` says where."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Envelope:
    """A target and its rows (or the claim check that holds them)."""

    target: Target
    rows: list[Any] | None = None
    blob: str | None = None
    #: The sender's ingest profile override for these rows (a table profile entry).
    profile: dict[str, Any] | None = None
    #: Only these of the table's destinations (None: all of them, as routed).
    destinations: tuple[str, ...] | None = None
    #: A re-send by the bundle for the destinations that failed: refused rows were
    #: dead-lettered by the first delivery (see the module).
    resent: bool = False

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"dataset": self.target.dataset, "table": self.target.table}
        if self.target.workspace:
            body["workspace"] = self.target.workspace
        if self.profile is not None:
            body["profile"] = self.profile
        if self.destinations is not None:
            body["destinations"] = list(self.destinations)
        if self.resent:
            body["resent"] = True
        if self.blob is not None:
            body["blob"] = self.blob
        else:
            body["rows"] = self.rows
        return body


def loads(body: bytes) -> Any:
    """JSON from UTF-8 bytes (a BOM is allowed); a clear error with the position otherwise."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BodyError(f"the body is not UTF-8 text (byte {exc.start} is invalid)") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno} "
            f"(character {exc.pos})"
        ) from None
    except RecursionError:
        raise BodyError("the body is nested too deeply to be rows") from None
    except ValueError as exc:  # e.g. an integer literal over Python's digit limit
        raise BodyError(f"the body is not usable JSON: {exc}") from None


def loads_ndjson(body: bytes) -> list[Any]:
    """One JSON value per non-empty line."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BodyError(f"the body is not UTF-8 text (byte {exc.start} is invalid)") from None
    rows = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 is data
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise BodyError(
                f"line {number} is not valid JSON: {exc.msg} at column {exc.colno}"
            ) from None
        except (RecursionError, ValueError) as exc:
            raise BodyError(f"line {number} is not usable JSON: {type(exc).__name__}") from None
    return rows


def rows_of(body: Any, where: str = "body") -> list[Any]:
    """The ``rows`` array of a Power BI Add Rows body, ``{"rows": [...]}``."""
    if not isinstance(body, dict):
        raise BodyError(f"{where} must be a JSON object with a 'rows' array", where)
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise BodyError(f"{where}.rows must be an array of row objects", f"{where}.rows")
    return rows


def _text(body: dict[str, Any], key: str, where: str, required: bool) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BodyError(f"{where}.{key} must be a non-empty string", f"{where}.{key}")
    return value


def envelope(body: Any, where: str = "body") -> Envelope:
    """One envelope, checked field by field."""
    if not isinstance(body, dict):
        raise BodyError(f"{where} must be an object with 'dataset', 'table' and 'rows'", where)
    dataset = _text(body, "dataset", where, True)
    table = _text(body, "table", where, True)
    workspace = _text(body, "workspace", where, False)
    assert dataset is not None and table is not None
    target = Target(dataset, table, workspace)
    profile = body.get("profile")
    if profile is not None and not isinstance(profile, dict):
        raise BodyError(
            f"{where}.profile must be an object (a table's ingest profile)", f"{where}.profile"
        )
    chosen = body.get("destinations")
    destinations: tuple[str, ...] | None = None
    if chosen is not None:
        if (
            not isinstance(chosen, list)
            or not chosen
            or not all(isinstance(name, str) for name in chosen)
        ):
            raise BodyError(
                f"{where}.destinations must be a non-empty array of destination names",
                f"{where}.destinations",
            )
        destinations = tuple(chosen)
    resent = body.get("resent", False)
    if not isinstance(resent, bool) or (resent and destinations is None):
        raise BodyError(
            f"{where}.resent must be true or false, and true only with destinations",
            f"{where}.resent",
        )
    if "blob" in body and "rows" not in body:
        return Envelope(
            target,
            blob=_text(body, "blob", where, True),
            profile=profile,
            destinations=destinations,
            resent=resent,
        )
    rows = body.get("rows")
    if not isinstance(rows, list):
        raise BodyError(f"{where}.rows must be an array of row objects", f"{where}.rows")
    return Envelope(target, rows=rows, profile=profile, destinations=destinations, resent=resent)


def resend_for_stopped(item: Envelope, rows: list[Any], result: PushResult) -> Envelope | None:
    """The envelope that finishes ``item`` (whose rows are ``rows``) when some of its table's
    destinations stopped on a transient failure and every other one delivered or
    dead-lettered all of them: the rows the stopped ones may lack (from the first one they
    did not acknowledge or dead-letter), for them only, marked ``resent``. None when there is
    nothing to re-send this way (one destination, none stopped, or all stopped: the caller
    then redelivers as for one destination)."""
    per = result.destinations
    failed = [name for name, each in per.items() if each.stopped is not None]
    if not failed or len(failed) == len(per):
        return None
    start = min(per[name].resume_from for name in failed)
    return Envelope(
        item.target,
        rows=rows[start:],
        profile=item.profile,
        destinations=tuple(failed),
        resent=True,
    )


def envelopes(body: Any) -> list[Envelope]:
    """An envelope, or a non-empty array of them."""
    if isinstance(body, list):
        if not body:
            raise BodyError("the body is an empty array; send at least one envelope", "body")
        return [envelope(item, f"body[{i}]") for i, item in enumerate(body)]
    return [envelope(body)]
