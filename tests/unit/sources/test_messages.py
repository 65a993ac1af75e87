"""Queue message bodies: base64 or plain JSON in, clear reasons for anything else."""

from __future__ import annotations

import base64

import pytest

from shared.sources.messages import MessageError, decode, encode


def test_round_trip_of_what_the_app_writes() -> None:
    """encode() writes base64 text that decode() reads back."""
    text = '{"dataset": "S", "table": "T", "rows": [{"é": 1}]}'
    assert decode(encode(text).encode()) == {"dataset": "S", "table": "T", "rows": [{"é": 1}]}


def test_plain_json_from_senders_that_do_not_encode() -> None:
    """Plain JSON text is accepted as well."""
    assert decode(b'  {"a": 1}\n') == {"a": 1}
    assert decode(b"[1, 2]") == [1, 2]


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "empty"),
        (b"   ", "empty"),
        (b"\xff\xfe", "not UTF-8"),
        (b"hello world", "neither base64 nor JSON"),
        (b"!!!!", "neither base64 nor JSON"),
        (base64.b64encode(b"not json"), "not valid JSON"),
        (base64.b64encode(b"\xff\xfe"), "neither base64 nor JSON"),
        (b'{"a": ', "not valid JSON"),
        (b"[" * 100_000, "not usable JSON"),
    ],
)
def test_malformed_messages_say_why(raw: bytes, says: str) -> None:
    """Each kind of malformed message is a MessageError whose text says what is wrong."""
    with pytest.raises(MessageError) as caught:
        decode(raw)
    assert says in str(caught.value)
