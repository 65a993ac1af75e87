"""The cross-process lock (shared/stores/leases.py) on real blob leases in Azurite: contention,
a holder that died, renewal past the lease's 15 s, the deadline, and the fallback when storage
cannot be reached.

Two of these wait for Azurite's own clock (a lease lapses after 15 s, the shortest Blob storage
grants): that clock cannot be injected, so those two take about 16 s each.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient, ContainerClient

from shared.engine.retry import Deadline
from shared.errors import TransientError
from shared.stores import storage
from shared.stores.leases import LEASE_SECONDS, BlobLeaseLock, dataset_lock_name
from tests.azurite import Azurite

pytestmark = pytest.mark.integration


@pytest.fixture
def container(azurite: Azurite) -> Iterator[str]:
    """A fresh container name for the test (the lock creates it)."""
    yield f"locks{uuid.uuid4().hex[:10]}"
    storage.forget()


def lock(
    azurite: Azurite,
    container: str,
    renew_every: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> BlobLeaseLock:
    """A lock built the way the app builds it (shared.runtime.build_ingestor)."""
    return BlobLeaseLock.from_settings(
        "AzureWebJobsStorage",
        container,
        {"AzureWebJobsStorage": azurite.connection_string},
        renew_every=renew_every,
        sleep=sleep,
    )


def blobs(azurite: Azurite, container: str) -> ContainerClient:
    return BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        container
    )


def lease_state(azurite: Azurite, container: str, name: str) -> str:
    """'leased' or 'available', as the storage reports the blob's lease."""
    state: str = blobs(azurite, container).get_blob_client(name).get_blob_properties().lease.state
    return state


def test_a_free_lock_is_taken_and_released(azurite: Azurite, container: str) -> None:
    """The first use creates the container and the blob; the lease is held inside the block and
    free after it."""
    name = dataset_lock_name(None, "Sales.Marketing")
    with lock(azurite, container).hold(name) as held:
        assert held is True
        assert lease_state(azurite, container, name) == "leased"
    assert lease_state(azurite, container, name) == "available"
    assert name == "datasets/me/Sales%2EMarketing"


def test_a_second_holder_waits_until_the_first_releases(azurite: Azurite, container: str) -> None:
    """Two lock objects (as two processes have) contend for one name: the second polls while
    the first holds it, and gets it once it is released, never before."""
    name = dataset_lock_name("3D9B93C6-7B6D-4801-A491-1738910904FD", "SalesMarketing")
    events: list[str] = []
    waiting = threading.Event()

    def sleep(seconds: float) -> None:
        waiting.set()  # the second lock was refused at least once: it is waiting
        time.sleep(seconds)

    second = lock(azurite, container, sleep=sleep)
    result: list[bool] = []

    def contend() -> None:
        with second.hold(name, Deadline.after(60)) as held:
            events.append("second acquired")
            result.append(held)

    with lock(azurite, container).hold(name) as held:
        assert held
        thread = threading.Thread(target=contend)
        thread.start()
        assert waiting.wait(30), "the second lock never polled"
        events.append("first releasing")
    thread.join(30)

    assert result == [True]
    assert events == ["first releasing", "second acquired"]
    # One name, case-insensitive in its workspace id, is one lock.
    assert name == dataset_lock_name("3d9b93c6-7b6d-4801-a491-1738910904fd", "SalesMarketing")


def test_a_lease_left_by_a_dead_holder_is_taken_once_it_lapses(
    azurite: Azurite, container: str
) -> None:
    """A holder that died (a lease acquired for 15 s with the SDK and never released) stalls a
    waiter until the lease lapses, not longer: the waiter gets it within its deadline."""
    name = dataset_lock_name(None, "Orphaned")
    client = blobs(azurite, container)
    client.create_container()
    client.upload_blob(name, b"")
    client.get_blob_client(name).acquire_lease(lease_duration=15)
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        time.sleep(seconds)

    with lock(azurite, container, sleep=sleep).hold(name, Deadline.after(45)) as held:
        assert held is True
        assert lease_state(azurite, container, name) == "leased"
    assert polls, "the dead holder's lease was not in the way"
    assert max(polls) <= 1.0  # the poll interval's cap: taken within a second of the lapse


def test_a_live_holder_keeps_the_lease_past_its_duration(azurite: Azurite, container: str) -> None:
    """Work that outlasts the 15 s lease keeps it: the lock renews it, so another process is
    still refused after the lease would have lapsed."""
    name = dataset_lock_name(None, "SlowCreation")
    with lock(azurite, container, renew_every=2.0).hold(name) as held:
        assert held
        time.sleep(LEASE_SECONDS + 1)  # Azurite's clock decides when a lease lapses
        with pytest.raises(HttpResponseError) as refused:
            blobs(azurite, container).get_blob_client(name).acquire_lease(lease_duration=15)
        assert refused.value.error_code == "LeaseAlreadyPresent"
    assert lease_state(azurite, container, name) == "available"


def test_a_wait_past_the_deadline_is_a_transient_error(azurite: Azurite, container: str) -> None:
    """A waiter does not start a poll that would end after its deadline: TransientError with a
    retry_after (by then the holder is done, or its lease has lapsed). The deadline's clock and
    the waiter's sleep are one fake clock: no real waiting."""
    name = dataset_lock_name(None, "Busy")
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    waiter = lock(azurite, container, sleep=sleep)
    with lock(azurite, container).hold(name) as held:
        assert held
        with (
            pytest.raises(TransientError) as late,
            waiter.hold(name, Deadline.after(3.0, lambda: now[0])),
        ):
            pytest.fail("the lock was taken while another held it")
    assert late.value.retry_after == float(LEASE_SECONDS)
    assert 2.0 <= now[0] <= 3.0  # it polled until the next poll would have ended too late
    assert "Busy" in late.value.message


def test_unreachable_storage_falls_back_with_a_warning(
    azurite: Azurite, caplog: pytest.LogCaptureFixture
) -> None:
    """Storage that refuses connections (a closed port) does not stop the caller: the block
    runs without the lock (held is False), with a warning that says so."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = azurite.connection_string.replace(azurite.blob, f"http://127.0.0.1:{port}")
    unreachable = BlobLeaseLock.from_settings("Closed", "powerbi-locks", {"Closed": closed})
    caplog.set_level(logging.WARNING, "shared.stores.leases")
    ran = []
    try:
        with unreachable.hold(dataset_lock_name(None, "Anything"), Deadline.after(30)) as held:
            ran.append(held)
    finally:
        storage.forget()
    assert ran == [False]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("without the lock" in w and "ServiceRequestError" in w for w in warnings), warnings


def test_an_unconfigured_connection_falls_back_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No storage connection at all (the operator's command line without one): the block runs
    without the lock, and the warning names the missing setting."""
    unset = BlobLeaseLock.from_settings("AzureWebJobsStorage", "powerbi-locks", {})
    caplog.set_level(logging.WARNING, "shared.stores.leases")
    with unset.hold(dataset_lock_name(None, "Anything")) as held:
        assert held is False
    assert any("AzureWebJobsStorage" in r.getMessage() for r in caplog.records)
