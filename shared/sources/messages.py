"""Queue message bodies: how envelopes travel on the rows queue.

The app reads its queue with ``messageEncoding: none`` (host.json) and decodes here, so that a
message that is not base64 or not JSON reaches the function and is dead-lettered with the
reason on its first delivery. With the host's default (base64) it would fail to bind five
times and land in the poison queue with no reason at all (Azure/azure-sdk-for-net#21449).
Messages written by this app are base64 text, which every Functions app reads by default; plain
JSON text from senders that do not encode is accepted too.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from shared.errors import ValidationError


class MessageError(ValidationError):
    """A message body that cannot be read as an envelope; the message says why."""


def encode(text: str) -> str:
    """A message body as it goes on the queue: base64 of the UTF-8 text."""
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def decode(raw: bytes) -> Any:
    """The JSON value a message carries, whether base64-encoded or plain JSON text."""
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise MessageError("the message is not UTF-8 text") from None
    if not text:
        raise MessageError("the message is empty")
    if text[0] not in "{[":
        try:
            text = base64.b64decode(text, validate=True).decode("utf-8-sig").strip()
        except (binascii.Error, ValueError):
            raise MessageError(
                "the message is neither base64 nor JSON (senders should base64-encode the "
                "JSON envelope, as Functions queue bindings do)"
            ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MessageError(
            f"the message is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except (RecursionError, ValueError) as exc:
        raise MessageError(f"the message is not usable JSON ({type(exc).__name__})") from None
