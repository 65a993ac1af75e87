"""The Kusto surface with azure-kusto-data: management commands, queries, streaming
ingestion, tokens (token provider and managed identity), errors and faults."""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests
from azure.kusto.data import KustoClient, KustoConnectionStringBuilder
from azure.kusto.data.data_format import DataFormat
from azure.kusto.data.exceptions import (
    KustoApiError,
    KustoNetworkError,
    KustoServiceError,
    KustoThrottlingError,
)

from tests.emulator.conftest import IDENTITY_HEADER, USER_ASSIGNED_ID, EmulatorProcess
from tests.emulator.kusto_fixtures import (
    DATABASE,
    client,
    kusto,
    kusto_azurite,
    kusto_emulator,
    kusto_state,
    kusto_token,
    new_table,
    rows_of,
    set_kusto_faults,
)

__all__ = ["kusto", "kusto_azurite", "kusto_emulator"]


def stream(records: list[dict[str, object]]) -> io.BytesIO:
    """JSON lines, gzip-compressed: execute_streaming_ingest always sends Content-Encoding
    gzip and leaves compressing to its caller (the ingest clients do it)."""
    return io.BytesIO(gzip.compress("\n".join(json.dumps(r) for r in records).encode()))


def streaming_ingest(kusto: KustoClient, table: str, records: list[dict[str, object]]) -> None:
    kusto.execute_streaming_ingest(
        DATABASE, table, stream(records), None, DataFormat.JSON, mapping_name="m"
    )


def test_auth_metadata_is_404_so_the_client_uses_public_cloud_defaults(
    kusto_emulator: EmulatorProcess,
) -> None:
    response = requests.get(f"{kusto_emulator.base}/v1/rest/auth/metadata", timeout=10)
    assert response.status_code == 404


def test_create_merge_adds_columns_and_shows_the_schema(kusto: KustoClient) -> None:
    table = new_table(kusto)
    kusto.execute_mgmt(
        DATABASE, f".create-merge table {table} (id:long, price:decimal, at:datetime)"
    )
    csl = kusto.execute_mgmt(DATABASE, f".show table {table} cslschema").primary_results[0]
    assert csl[0]["Schema"] == "id:long,name:string,price:decimal,at:datetime"
    schema = kusto.execute_mgmt(DATABASE, f".show table {table} schema as json").primary_results[0]
    ordered = json.loads(schema[0]["Schema"])["OrderedColumns"]
    assert [(c["Name"], c["CslType"]) for c in ordered] == [
        ("id", "long"),
        ("name", "string"),
        ("price", "decimal"),
        ("at", "datetime"),
    ]
    names = [
        r["TableName"] for r in kusto.execute_mgmt(DATABASE, ".show tables").primary_results[0]
    ]
    assert table in names


def test_create_merge_refuses_a_retype_as_a_permanent_bad_request(kusto: KustoClient) -> None:
    table = new_table(kusto)
    with pytest.raises(KustoApiError) as caught:
        kusto.execute_mgmt(DATABASE, f".create-merge table {table} (id:string)")
    assert caught.value.error.code == "General_BadRequest"
    assert caught.value.error.permanent is True
    assert "'long'" in caught.value.error.description


def test_mapping_is_echoed_in_the_properties_form(kusto: KustoClient) -> None:
    table = new_table(kusto)
    kusto.execute_mgmt(
        DATABASE,
        f'.create-or-alter table {table} ingestion json mapping "flat" '
        '\'[{"column":"id","path":"$.key"},\' \'{"column":"name","path":"$.label"}]\'',
    )
    shown = kusto.execute_mgmt(
        DATABASE, f".show table {table} ingestion json mappings"
    ).primary_results[0]
    mapping = {r["Name"]: json.loads(r["Mapping"]) for r in shown}
    assert mapping["flat"] == [
        {"Column": "id", "Properties": {"Path": "$.key"}},
        {"Column": "name", "Properties": {"Path": "$.label"}},
    ]


def test_unknown_command_is_a_syntax_error(kusto: KustoClient) -> None:
    with pytest.raises(KustoApiError) as caught:
        kusto.execute_mgmt(DATABASE, ".frobnicate table X")
    assert caught.value.error.type == "Kusto.Data.Exceptions.SyntaxException"
    assert caught.value.error.permanent is True


def test_unknown_database_is_database_not_exist(kusto: KustoClient) -> None:
    with pytest.raises(KustoApiError) as caught:
        kusto.execute_mgmt("Nope", ".show tables")
    assert caught.value.error.code == "BadRequest_DatabaseNotExist"


def test_streamed_rows_are_read_back_with_types(kusto: KustoClient) -> None:
    table = new_table(kusto, "id:long, name:string, price:decimal, ok:bool, at:datetime, x:real")
    streaming_ingest(
        kusto,
        table,
        [
            {"id": 1, "name": "a", "price": 1.10, "ok": True, "at": "2026-01-02T03:04:05Z", "x": 1},
            {
                "id": 2,
                "name": "b",
                "price": 2,
                "ok": False,
                "at": "2026-01-02T03:04:05+01:00",
                "x": 2.5,
            },
            # Values that do not fit are nulls ("Value not matching the table schema data type"
            # -> NULL, ingest-invalid-data); a missing field is null too.
            {"id": 3.5, "name": 7, "price": "x", "ok": "yes", "at": "not a date"},
        ],
    )
    rows = rows_of(kusto, f"{table} | order by id asc")
    assert rows[0][0] is None  # nulls first in ascending order
    assert rows[0][1:] == [None, None, None, None, None]
    assert rows[1][:4] == [1, "a", Decimal("1.10"), True]
    assert rows[1][4].isoformat() == "2026-01-02T03:04:05+00:00"
    assert rows[2][4].isoformat() == "2026-01-02T02:04:05+00:00"
    assert rows[2][5] == 2.5


def test_query_subset_count_take_where_order_summarize_project(kusto: KustoClient) -> None:
    table = new_table(kusto)
    streaming_ingest(kusto, table, [{"id": i, "name": f"n{i % 3}"} for i in range(10)])
    assert rows_of(kusto, f"{table} | count") == [[10]]
    assert len(rows_of(kusto, f"{table} | take 4")) == 4
    assert rows_of(kusto, f"{table} | where name == 'n1' | order by id | project id") == [
        [7],
        [4],
        [1],
    ]
    assert rows_of(kusto, f"{table} | where id >= 8 | summarize n = count()") == [[2]]
    assert rows_of(kusto, f"{table} | order by id asc | take 1 | project name, id") == [["n0", 0]]


def test_unsupported_query_is_a_syntax_error_and_unknown_table_a_semantic_one(
    kusto: KustoClient,
) -> None:
    table = new_table(kusto)
    with pytest.raises(KustoApiError) as caught:
        kusto.execute_query(DATABASE, f"{table} | join kind=inner (Other) on id")
    assert caught.value.error.type == "Kusto.Data.Exceptions.SyntaxException"
    with pytest.raises(KustoApiError) as caught:
        kusto.execute_query(DATABASE, "NoSuchTable | count")
    assert caught.value.error.type == "Kusto.Data.Exceptions.SemanticException"
    assert "SEM0100" in caught.value.error.description


def test_streaming_without_the_policy_is_a_permanent_bad_request(kusto: KustoClient) -> None:
    table = new_table(kusto)
    kusto.execute_mgmt(DATABASE, f".alter table {table} policy streamingingestion disable")
    with pytest.raises(KustoApiError) as caught:
        streaming_ingest(kusto, table, [{"id": 1}])
    assert caught.value.error.code == "BadRequest_StreamingIngestionPolicyNotEnabled"
    assert caught.value.error.permanent is True
    # The database policy applies when the table has none of its own ... but the table's wins.
    kusto.execute_mgmt(DATABASE, f".alter database {DATABASE} policy streamingingestion enable")
    try:
        with pytest.raises(KustoApiError):
            streaming_ingest(kusto, table, [{"id": 1}])
        kusto.execute_mgmt(
            DATABASE, f".alter table {table} policy streamingingestion '{{\"IsEnabled\": true}}'"
        )
        streaming_ingest(kusto, table, [{"id": 1}])
    finally:
        kusto.execute_mgmt(
            DATABASE, f".alter database {DATABASE} policy streamingingestion disable"
        )
    assert rows_of(kusto, f"{table} | count") == [[1]]


def test_unknown_mapping_and_table_are_permanent(kusto: KustoClient) -> None:
    table = new_table(kusto)
    with pytest.raises(KustoApiError) as caught:
        kusto.execute_streaming_ingest(
            DATABASE, table, stream([{"id": 1}]), None, DataFormat.JSON, mapping_name="nope"
        )
    assert caught.value.error.code == "BadRequest_MappingReferenceWasNotFound"
    assert caught.value.error.permanent is True
    with pytest.raises(KustoApiError) as caught:
        kusto.execute_streaming_ingest(
            DATABASE, "NoTable", stream([{"id": 1}]), None, DataFormat.JSON, mapping_name="m"
        )
    assert caught.value.error.code == "BadRequest_TableNotExist"


def test_streaming_over_4_mib_is_413_payload_too_large(
    kusto_emulator: EmulatorProcess, kusto: KustoClient
) -> None:
    table = new_table(kusto)
    body = gzip.compress(os.urandom(4 * 1024 * 1024 + 10))  # random bytes do not compress
    response = requests.post(
        f"{kusto_emulator.base}/v1/rest/ingest/{DATABASE}/{table}?streamFormat=json&mappingName=m",
        data=body,
        headers={
            "Authorization": f"Bearer {kusto_token(kusto_emulator)}",
            "Content-Encoding": "gzip",
        },
        timeout=60,
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "PayloadTooLarge" and error["@permanent"] is True


def test_a_body_that_arrives_in_pieces_is_read_to_its_end(
    kusto_emulator: EmulatorProcess, kusto: KustoClient
) -> None:
    """A streamed body sent in two chunks (chunked transfer), the second after a pause: every
    row is stored, not only those that had arrived when the handler first read (aiohttp's
    read(n) returns what is there). The pause is the point of the test (a slow network), not
    a wait for a result, so there is no clock to inject."""
    table = new_table(kusto)
    body = stream([{"id": i, "name": f"n{i}"} for i in range(20_000)]).getvalue()

    def pieces() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        time.sleep(0.3)
        yield body[len(body) // 2 :]

    response = requests.post(
        f"{kusto_emulator.base}/v1/rest/ingest/{DATABASE}/{table}?streamFormat=json&mappingName=m",
        data=pieces(),
        headers={
            "Authorization": f"Bearer {kusto_token(kusto_emulator)}",
            "Content-Encoding": "gzip",
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert rows_of(kusto, f"{table} | count") == [[20_000]]


def test_a_request_without_a_token_is_401_and_a_power_bi_token_is_refused(
    kusto_emulator: EmulatorProcess,
) -> None:
    response = requests.post(
        f"{kusto_emulator.base}/v1/rest/mgmt",
        json={"db": DATABASE, "csl": ".show tables"},
        timeout=10,
    )
    assert response.status_code == 401
    assert set(response.json()["error"]) >= {"code", "message", "@type", "@message", "@permanent"}
    assert response.headers["x-ms-activity-id"]
    powerbi = kusto_token(kusto_emulator, "https://analysis.windows.net/powerbi/api")
    with client(kusto_emulator, powerbi) as refused, pytest.raises(KustoServiceError) as caught:
        refused.execute_mgmt(DATABASE, ".show tables")
    assert "401" in str(caught.value)


def test_the_cluster_uri_is_an_accepted_audience(kusto_emulator: EmulatorProcess) -> None:
    with client(kusto_emulator, kusto_token(kusto_emulator, "https://127.0.0.1")) as kusto:
        kusto.execute_mgmt(DATABASE, ".show version")


def test_managed_identity_through_the_msi_endpoint(
    kusto_emulator: EmulatorProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """with_aad_managed_service_identity_authentication: azure-identity's App Service flow
    against the emulator's /msi/token, for the Kusto resource the client asks for."""
    for name in [k for k in os.environ if k.startswith(("AZURE_", "MSI_", "IDENTITY_", "IMDS_"))]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{kusto_emulator.base}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    for client_id in (None, USER_ASSIGNED_ID):
        kcsb = KustoConnectionStringBuilder.with_aad_managed_service_identity_authentication(
            kusto_emulator.base, client_id=client_id
        )
        with KustoClient(kcsb) as kusto:
            table = new_table(kusto)
            streaming_ingest(kusto, table, [{"id": 5, "name": "mi"}])
            assert rows_of(kusto, table) == [[5, "mi"]]


def test_throttling_is_kusto_throttling_error(
    kusto_emulator: EmulatorProcess, kusto: KustoClient
) -> None:
    table = new_table(kusto)
    before = kusto_state(kusto_emulator)["counters"].get("throttled", 0)
    set_kusto_faults(kusto_emulator, script=["throttle"])
    with pytest.raises(KustoThrottlingError):
        streaming_ingest(kusto, table, [{"id": 1}])
    assert kusto_state(kusto_emulator)["counters"]["throttled"] == before + 1
    streaming_ingest(kusto, table, [{"id": 1}])  # the script is used up
    assert rows_of(kusto, f"{table} | count") == [[1]]


def test_injected_500_is_transient_and_accept_then_fail_stores_the_rows(
    kusto_emulator: EmulatorProcess, kusto: KustoClient
) -> None:
    table = new_table(kusto)
    set_kusto_faults(kusto_emulator, script=["error_500", "accept_then_fail"])
    for _ in range(2):
        with pytest.raises(KustoApiError) as caught:
            streaming_ingest(kusto, table, [{"id": 1}])
        assert caught.value.error.permanent is False
    assert rows_of(kusto, f"{table} | count") == [[1]]  # the second one was stored
    # ... and recorded as stored with its answer lost (the reliability ledger traces
    # duplicates to these).
    tables = {t["name"]: t for d in kusto_state(kusto_emulator)["databases"] for t in d["tables"]}
    assert tables[table]["answersLost"] == [{"offset": 0, "count": 1}]


def test_dropped_connection(kusto_emulator: EmulatorProcess, kusto: KustoClient) -> None:
    table = new_table(kusto)
    set_kusto_faults(kusto_emulator, script=["drop"])
    with pytest.raises(KustoNetworkError):
        streaming_ingest(kusto, table, [{"id": 1}])
    assert rows_of(kusto, f"{table} | count") == [[0]]


def test_state_lists_tables_and_counters(
    kusto_emulator: EmulatorProcess, kusto: KustoClient
) -> None:
    table = new_table(kusto)
    streaming_ingest(kusto, table, [{"id": 1}, {"id": 2}])
    state = kusto_state(kusto_emulator)
    tables = {t["name"]: t for d in state["databases"] for t in d["tables"]}
    assert tables[table]["rows"] == 2 and tables[table]["mappings"] == ["m"]
    assert state["counters"]["streaming_requests"] >= 1
    assert state["counters"]["rows_ingested"] >= 2


def test_dashboard_shows_eventhouse_tables_and_row_counts(
    kusto_emulator: EmulatorProcess, kusto: KustoClient
) -> None:
    table = new_table(kusto)
    streaming_ingest(kusto, table, [{"id": i} for i in range(3)])
    page = requests.get(f"{kusto_emulator.base}/", timeout=10).text
    assert 'data-region="eventhouse"' in page
    state = requests.get(f"{kusto_emulator.base}/_emulator/dashboard/state", timeout=10).json()
    panel = state["regions"]["eventhouse"]
    assert f'<span>{table}</span> <span class="count">3 rows</span>' in panel
