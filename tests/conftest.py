"""Checks that apply to every test of the suite: no secret ever reaches a log line.

A handler on the root logger sees every record at every level (the root logger is set to DEBUG
while a test runs, and put back afterwards). When a test ends, any record that carried a secret
fails it, naming the logger and the kind of secret (the secret itself is masked in the report).
Records emitted between tests (module or session fixtures) are charged to the next test to end,
and those of the session's last teardowns to the session.

What counts as a secret: a JWT, the secrets and identity headers the suite configures, the
Azurite account key (public, but a real key would be logged the same way), ``AccountKey=``, an
HMAC signature (``sha256=`` and 64 hex digits) and ``Bearer`` followed by a token. Libraries
count too: azure-core and azure-storage redact ``Authorization`` and SAS signatures themselves.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Iterator

import pytest

#: Secret values the suite configures (emulator clients, identity headers, webhook secrets).
TEST_SECRETS = (
    "test-client-secret",
    "emulator-client-secret",
    "webhook-shared-secret",
    "devhost-webhook-secret",
    "test-identity-header",
    "emulator-identity-header",
)
#: Azurite's well-known account key: public, yet it must not be logged either.
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

#: (what, pattern): every pattern that marks a secret in a text.
SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("a JWT", re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.")),
    *((f"the test secret {s!r}", re.compile(re.escape(s))) for s in TEST_SECRETS),
    ("the Azurite account key", re.compile(re.escape(AZURITE_KEY))),
    ("a storage account key (AccountKey=)", re.compile(r"AccountKey=[^;\s'\"]*", re.IGNORECASE)),
    ("an HMAC signature (sha256=<hex>)", re.compile(r"sha256=[0-9a-fA-F]{64}")),
    # A token68 after the scheme; not an auth-param (`Bearer realm="..."`, `error=...`), not
    # azure-core's redaction, not the words "bearer token(s)".
    (
        "a bearer token",
        re.compile(
            r"\b(?i:bearer)\s+(?!(?i:redacted|tokens?)\b)"
            r"[A-Za-z0-9\-._~+/]+(?!=*[A-Za-z0-9\-._~+/\"])"
        ),
    ),
)


def find_secrets(text: str) -> list[str]:
    """What kinds of secret ``text`` holds (empty when none)."""
    return [what for what, pattern in SECRET_PATTERNS if pattern.search(text)]


def mask_secrets(text: str) -> str:
    """``text`` with every secret replaced by ``<secret>``, for reports."""
    for _, pattern in SECRET_PATTERNS:
        text = pattern.sub("<secret>", text)
    return re.sub(r"<secret>[A-Za-z0-9_\-=]*", "<secret>", text)


class SecretScanner(logging.Handler):
    """Scans each record as it is emitted; keeps only the findings."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._findings: list[str] = []
        self._guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken format string: scan its parts
            text = f"{record.msg!r} {record.args!r}"
        texts = [text]
        error = record.exc_info[1] if record.exc_info else None
        while error is not None:  # the exception and its causes, without source lines
            texts.append("".join(traceback.format_exception_only(type(error), error)))
            error = error.__cause__ or error.__context__
        found = sorted({what for part in texts for what in find_secrets(part)})
        if found:
            line = mask_secrets(" | ".join(texts))[:500]
            with self._guard:
                self._findings.append(
                    f"{record.name} {record.levelname}: {', '.join(found)} in {line!r}"
                )

    def take(self) -> list[str]:
        """The findings since the last call."""
        with self._guard:
            findings, self._findings = self._findings, []
        return findings


_scanner = SecretScanner()


@pytest.fixture(scope="session", autouse=True)
def _scan_logs_for_the_session() -> Iterator[None]:
    """The scanner on the root logger for the whole session (session fixtures included)."""
    root = logging.getLogger()
    level = root.level
    root.addHandler(_scanner)
    root.setLevel(logging.DEBUG)
    yield
    root.setLevel(level)
    root.removeHandler(_scanner)
    leftover = _scanner.take()
    if leftover:
        pytest.fail("secrets in log lines (session teardown):\n" + "\n".join(leftover))


@pytest.fixture(autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """Every log record of this test, at any level, is free of secrets."""
    root = logging.getLogger()
    level = root.level
    if _scanner not in root.handlers:  # a test that reconfigured logging: attach again
        root.addHandler(_scanner)
    root.setLevel(logging.DEBUG)
    yield
    root.setLevel(level)
    if _scanner not in root.handlers:
        root.addHandler(_scanner)
    findings = _scanner.take()
    if findings:
        pytest.fail("secrets in log lines:\n" + "\n".join(findings), pytrace=False)
