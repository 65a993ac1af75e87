"""What each reliability scenario must show, shared by the tests (``make test``) and the soak
(``make soak``), so that a soak round checks exactly what its test checks."""

from __future__ import annotations

import re
from collections import Counter

from tests.reliability.harness import (
    EVENTHOUSE,
    KINDS,
    KUSTO_KINDS,
    PATHS,
    POWERBI,
    DatasetLedger,
    Ledger,
)


def check_accounting(ledger: Ledger) -> None:
    """Every scenario: no row lost, none invented, the invalid rows dead-lettered and only
    they, the valid rows stored and only they."""
    for d in ledger.datasets:
        assert d.lost == 0, f"{d.name}: {d.lost} rows neither stored nor dead-lettered"
        assert d.phantom == 0, f"{d.name}: {d.phantom} rows nobody sent"
        assert d.distinct + d.dead_lettered == d.sent_total, d
        assert d.dead_lettered == d.bad > 0, d
        assert d.good_dead_lettered == 0 and d.bad_stored == 0, d
    assert ledger.replayed == ledger.poisoned, "a poisoned message was not replayed"


def check_faults(ledger: Ledger) -> None:
    """Faults: every path carried rows, every fault kind was met, every duplicate is a copy of
    a row stored in a batch whose answer was lost, no limit was hit that the client could
    have avoided."""
    check_accounting(ledger)
    for d in ledger.datasets:
        assert all(d.sent[path] > 0 for path in PATHS), d.sent
        assert d.unexplained_duplicates == 0, d
        assert d.avoidable_429s == 0, f"{d.name} hit a limit the client could have avoided"
    injected = ledger.injected
    for kind in KINDS:
        assert injected[f"injected_{kind}"] > 0, f"no {kind} was injected: {dict(injected)}"


def check_crashes(ledger: Ledger, crashes: int) -> None:
    """Crashes: all of them happened, some cut a blob and queue messages short, and a row is
    stored at most once, plus once per crash re-send and per lost answer."""
    check_accounting(ledger)
    assert ledger.crashes == crashes
    cut = ledger.cut_short()
    assert cut["ingest_blob"] > 0 and cut["ingest_queue"] > 0, ledger.crash_hits
    for d in ledger.datasets:
        assert d.max_copies <= 1 + ledger.crashes + d.injected.get("injected_accept_then_fail", 0)


def check_short_outage(ledger: Ledger, output: list[str]) -> None:
    """A short outage: met by the queue path, ridden out with nothing poisoned; a row appears
    twice at most (a POST in flight when the emulator was killed may be stored unanswered)."""
    check_accounting(ledger)
    assert ledger.emulator_outages == 1
    assert ledger.poisoned == 0
    # Met: a request found the port closed, was cut off when the emulator was killed under it,
    # or the identity endpoint (the emulator too) could not be reached. One full-suite run met
    # the outage without any "could not connect" line; its log was not kept, hence all three.
    met = ("could not connect", "no complete answer", "endpoint unreachable")
    assert any(sign in line for line in output for sign in met), "the outage was met"
    assert ledger.total("posts") > 0, "rows arrived after the emulator came back"
    assert all(d.max_copies <= 2 for d in ledger.datasets)


def check_long_outage(ledger: Ledger, output: list[str], tries: int) -> Counter[str]:
    """A long outage from the start: messages poisoned, each after exactly ``tries`` failed
    tries, none handled twice, all replayed. Returns the failed tries by number."""
    check_accounting(ledger)
    # No answer was lost and nothing crashed: a duplicate would be a message handled twice
    # (an invocation outliving its lease).
    assert ledger.total("duplicates") == 0
    assert ledger.poisoned > 0
    moved = [line for line in output if f"reached MaxDequeueCount of {tries}" in line]
    assert len(moved) == ledger.poisoned
    # Each failed try logs the message and the try's number: the poisoned ones failed a last
    # time and never once more.
    failed = re.findall(r"queue message (\S+) \(try (\d+)\): not delivered yet", "\n".join(output))
    last = {message for message, attempt in failed if attempt == str(tries)}
    assert max(int(attempt) for _, attempt in failed) == tries
    assert len(last) == ledger.poisoned
    return Counter(attempt for _, attempt in failed)


def check_scale_out(ledger: Ledger, crashes: int = 0, carry_on_within: float | None = None) -> None:
    """Scale-out (several hosts on one queue and one emulator): no sender was answered a
    failure (a 5xx other than 503, or an answer that does not account for the request's rows);
    every row accounted for (:func:`check_accounting`); exactly one dataset per name (the
    bundle created each once, however many hosts met it missing); no 429 the client could have
    avoided (the emulator's ``throttled_*`` counters: a quota of the dataset, counted over
    every host); every duplicate explained by a lost answer or by a re-send after an answer
    that said some rows were sent. With ``crashes`` hosts SIGKILLed and left down: a row is
    stored at most once plus once per crash and lost answer, and after each kill the other
    hosts carried on, within ``carry_on_within`` seconds when given.

    Every property is checked and all that fail are reported together, so that one run shows
    the whole picture (the baseline before issue 16's fixes fails several)."""
    problems: list[str] = []
    for d in ledger.datasets:
        if d.http_failures:
            problems.append(f"{d.name}: senders were answered failures: {d.http_failures[:3]}")
    try:
        check_accounting(ledger)
    except AssertionError as error:
        problems.append(f"accounting: {error}")
    for d in ledger.datasets:
        if d.datasets_named != 1:
            problems.append(f"{d.name}: {d.datasets_named} datasets of this name, not 1")
        if d.avoidable_429s:
            problems.append(f"{d.name}: {d.avoidable_429s} 429s the client could have avoided")
        if crashes == 0 and d.duplicates > d.explained_by_lost_answers + d.resent_rows:
            problems.append(
                f"{d.name}: {d.duplicates} duplicates, only {d.explained_by_lost_answers} after "
                f"lost answers and {d.resent_rows} re-sent after a partial answer"
            )
        allowed = 1 + crashes + d.injected.get("injected_accept_then_fail", 0)
        if crashes and d.max_copies > allowed:
            problems.append(f"{d.name}: a row stored {d.max_copies} times (at most {allowed})")
    if ledger.crashes != crashes:
        problems.append(f"{ledger.crashes} crashes, not {crashes}")
    for seconds in ledger.carried_on:
        if seconds is None or (carry_on_within is not None and seconds > carry_on_within):
            problems.append(
                f"after a kill the other hosts carried on after {seconds} s "
                f"(bound {carry_on_within} s)"
            )
    assert not problems, "scale-out:\n  " + "\n  ".join(problems)


def check_destination_faults(ledger: Ledger, faulted: str) -> None:
    """Faults on one destination only (issue 18, "What must be shown"): the other destination
    holds every valid row exactly once, as it would alone, and each invalid row is
    dead-lettered exactly once naming no destination; the faulted one holds every valid row
    or has it dead-lettered naming it, a duplicate there only where the emulator stored a
    batch and lost its answer; nothing lost, nothing invented, in either. Every path carried
    rows, every fault kind of the faulted surface was met, the other surface injected none.

    Every property is checked and all that fail are reported together, so that one run shows
    the whole picture."""
    problems: list[str] = []
    other = EVENTHOUSE if faulted == POWERBI else POWERBI
    assert ledger.eventhouse, "not a routed run: no Eventhouse ledger"
    for destination in (POWERBI, EVENTHOUSE):
        for d in ledger.of(destination):
            where = f"{destination} {d.name}"
            problems += _common(where, d)
            if destination == other:
                problems += _as_alone(where, d)
            else:
                if d.unexplained_duplicates:
                    problems.append(
                        f"{where}: {d.duplicates} duplicates, only "
                        f"{d.explained_by_lost_answers} after a lost answer"
                    )
                if d.good_dead_lettered != d.named_letters:
                    problems.append(f"{where}: valid rows dead-lettered naming no destination")
    for d in ledger.datasets:
        if d.avoidable_429s:
            problems.append(f"powerbi {d.name}: {d.avoidable_429s} 429s it could have avoided")
    powerbi, kusto = ledger.injected, ledger.kusto_injected
    met, quiet = (powerbi, kusto) if faulted == POWERBI else (kusto, powerbi)
    for kind in KINDS if faulted == POWERBI else KUSTO_KINDS:
        if not met[f"injected_{kind}"]:
            problems.append(f"no {kind} was injected on {faulted}: {dict(met)}")
    if sum(quiet.values()):
        problems.append(f"faults injected on {other}, which should have none: {dict(quiet)}")
    if ledger.replayed != ledger.poisoned:
        problems.append(f"{ledger.poisoned} messages poisoned, {ledger.replayed} replayed")
    assert not problems, f"faults on {faulted} only:\n  " + "\n  ".join(problems)


def _common(where: str, d: DatasetLedger) -> list[str]:
    """What holds in both destinations: every path carried rows, no row lost or invented,
    no invalid row stored, each invalid one dead-lettered (naming no destination), and no
    queued ingestion failed after it was accepted."""
    problems = []
    if not all(d.sent[path] > 0 for path in PATHS):
        problems.append(f"{where}: a path carried no rows: {d.sent}")
    if d.lost:
        problems.append(f"{where}: {d.lost} rows neither stored nor dead-lettered")
    if d.phantom:
        problems.append(f"{where}: {d.phantom} rows nobody sent")
    if d.bad_stored:
        problems.append(f"{where}: {d.bad_stored} invalid rows stored")
    if not d.bad or d.dead_lettered - d.named_letters != d.bad:
        problems.append(
            f"{where}: {d.bad} invalid rows, {d.dead_lettered - d.named_letters} "
            "dead-lettered naming no destination"
        )
    if d.distinct + d.dead_lettered != d.sent_total:
        problems.append(
            f"{where}: {d.distinct:,} stored + {d.dead_lettered:,} dead-lettered "
            f"!= {d.sent_total:,} sent"
        )
    if d.failed_ingestions:
        problems.append(f"{where}: {d.failed_ingestions} queued ingestions failed in Kusto")
    return problems


def _as_alone(where: str, d: DatasetLedger) -> list[str]:
    """The destination without faults: exactly the valid rows, each once, and each invalid
    row's dead letter written once (not again on a re-send for the other destination)."""
    problems = []
    if d.duplicates:
        problems.append(f"{where}: {d.duplicates} duplicates (max {d.max_copies} copies)")
    if d.stored != d.sent_total - d.bad:
        problems.append(f"{where}: {d.stored:,} rows stored, {d.sent_total - d.bad:,} valid sent")
    if d.named_letters:
        problems.append(f"{where}: {d.named_letters} rows dead-lettered naming it")
    if d.refused_letter_lines != d.bad:
        problems.append(
            f"{where}: {d.refused_letter_lines} dead letters naming no destination for "
            f"{d.bad} invalid rows (each once); extra letters by path {d.refused_again}, "
            f"e.g. {d.refused_again_sources}"
        )
    return problems
