"""The OData ``$filter`` subset Get Groups understands, parsed as OData parses it.

The spec documents ``$filter`` on Get Groups with the example
``contains(name,'marketing') or name eq 'contoso'``. The emulator understands:

- ``name eq '...'`` and ``id eq '...'``;
- ``contains(name,'...')`` (and ``contains(id,'...')``);
- ``and``, ``or`` (``and`` binds tighter, as in OData) and parentheses.

String literals follow OData ABNF (``SQUOTE *( SQUOTE-in-string / pchar-no-SQUOTE ) SQUOTE``,
where ``SQUOTE-in-string = SQUOTE SQUOTE``): single quotes, a doubled quote stands for one, and
anything else inside, keywords and spaces included, is text. The expression is tokenised first,
so ``name eq 'Sales and Marketing'`` is one comparison, not two terms split at ``and``.
Comparisons ignore case (the emulator's long-standing reading; the service's collation is not
documented).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]

_FIELDS = ("name", "id")
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^']|'')*')
  | (?P<punct>[(),])
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_UNTERMINATED = re.compile(r"'(?:[^']|'')*$")


class FilterError(ValueError):
    """The expression is not in the subset; the message says where and why."""


@dataclass(frozen=True)
class _Token:
    kind: str  # "string", "punct", "word" or "end"
    text: str
    position: int

    @property
    def value(self) -> str:
        """A string literal's text, its doubled quotes undone."""
        return self.text[1:-1].replace("''", "'")


def _tokens(expression: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            if _UNTERMINATED.match(expression, position):
                raise FilterError(f"the string starting at character {position} is not closed")
            raise FilterError(f"unexpected {expression[position]!r} at character {position}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append(_Token(kind, match.group(), position))
        position = match.end()
    tokens.append(_Token("end", "", position))
    return tokens


class _Parser:
    def __init__(self, expression: str) -> None:
        self.tokens = _tokens(expression)
        self.at = 0

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token.kind == "word" and token.text.lower() == word:
            self.at += 1
            return True
        return False

    def expect(self, kind: str, text: str | None = None) -> _Token:
        token = self.take()
        if token.kind != kind or (text is not None and token.text.lower() != text):
            wanted = repr(text) if text is not None else f"a {kind}"
            found = repr(token.text) if token.text else "the end"
            raise FilterError(f"expected {wanted} at character {token.position}, found {found}")
        return token

    def field(self) -> str:
        token = self.expect("word")
        name = token.text.lower()
        if name not in _FIELDS:
            raise FilterError(
                f"unsupported property {token.text!r} at character {token.position}; use name or id"
            )
        return name

    def parse(self) -> Predicate:
        predicate = self.disjunction()
        self.expect("end")
        return predicate

    def disjunction(self) -> Predicate:
        alternatives = [self.conjunction()]
        while self.keyword("or"):
            alternatives.append(self.conjunction())
        if len(alternatives) == 1:
            return alternatives[0]
        return lambda group: any(p(group) for p in alternatives)

    def conjunction(self) -> Predicate:
        terms = [self.term()]
        while self.keyword("and"):
            terms.append(self.term())
        if len(terms) == 1:
            return terms[0]
        return lambda group: all(p(group) for p in terms)

    def term(self) -> Predicate:
        token = self.peek()
        if token.kind == "punct" and token.text == "(":
            self.take()
            inner = self.disjunction()
            self.expect("punct", ")")
            return inner
        if self.keyword("contains"):
            self.expect("punct", "(")
            field = self.field()
            self.expect("punct", ",")
            needle = self.expect("string").value.lower()
            self.expect("punct", ")")
            return lambda group: needle in str(group[field]).lower()
        field = self.field()
        operator = self.take()
        if operator.kind != "word" or operator.text.lower() != "eq":
            raise FilterError(
                f"unsupported operator {operator.text or 'end'!r} at character "
                f"{operator.position}; the emulator understands eq and contains()"
            )
        wanted = self.expect("string").value.lower()
        return lambda group: str(group[field]).lower() == wanted


def parse_filter(expression: str | None) -> Predicate:
    """A predicate over groups (``{"id": ..., "name": ...}``) for ``expression``; every group
    matches when there is none. Raises :class:`FilterError` outside the subset."""
    if expression is None or not expression.strip():
        return lambda group: True
    return _Parser(expression).parse()
