"""The doctor's pure parts: reading a token's claims, telling an app from a user, comparing a
live dataset with its definition by the engine's rule, and what a settings failure skips."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from shared.cli.doctor import Check, Doctor, _compare, identity_of, jwt_claims, report
from shared.engine.schema import DatasetDefinition
from shared.errors import ConfigError
from shared.settings import Settings


def unsigned(claims: dict[str, object]) -> str:
    """A JWT-shaped string with these claims (no real signature: the doctor never checks it)."""

    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.c2ln"


def test_claims_are_read_without_verification_and_opaque_tokens_give_none() -> None:
    assert jwt_claims(unsigned({"oid": "o", "idtyp": "app"})) == {"oid": "o", "idtyp": "app"}
    assert jwt_claims("opaque-token") == {}
    assert jwt_claims("a.!!!.c") == {}


def test_app_or_user_from_idtyp_then_names_then_the_auth_mode() -> None:
    app = identity_of({"idtyp": "app", "oid": "o1", "appid": "a1"}, "static")
    user = identity_of(
        {"oid": "o2", "upn": "ops@contoso.com", "scp": "Dataset.ReadWrite.All"}, "managed_identity"
    )
    bare = identity_of({"oid": "o3"}, "service_principal")
    assert (app.app, app.object_id, app.app_id) == (True, "o1", "a1")
    assert (user.app, user.names) == (False, ("ops@contoso.com",))
    assert bare.app is True


def definition(*columns: tuple[str, str]) -> DatasetDefinition:
    body = {
        "name": "D",
        "tables": [{"name": "T", "columns": [{"name": n, "dataType": t} for n, t in columns]}],
    }
    return DatasetDefinition.from_body(body)


def live(*columns: tuple[str, str], table: str = "T") -> list[dict[str, object]]:
    return [{"name": table, "columns": [{"name": n, "dataType": t} for n, t in columns]}]


def test_compare_by_the_engines_rule() -> None:
    """Same columns (type names in any accepted spelling) match; a column only in the
    definition is added on the next push; a retyped or removed column, or a missing table, is
    drift named with table and column."""
    same = _compare("k", definition(("A", "int")), "id", live(("A", "Int64")), 1)
    wider = _compare(
        "k", definition(("A", "Int64"), ("B", "String")), "id", live(("A", "Int64")), 2
    )
    retyped = _compare("k", definition(("A", "String")), "id", live(("A", "Int64")), 1)
    removed = _compare(
        "k", definition(("A", "Int64")), "id", live(("A", "Int64"), ("Z", "Double")), 1
    )
    no_table = _compare("k", definition(("A", "Int64")), "id", live(("A", "Int64"), table="U"), 1)

    assert same.status == "ok" and same.detail == "dataset id matches its definition"
    assert wider.status == "ok" and "columns added on the next push: T.B" in wider.detail
    assert "2 datasets share the name" in wider.detail
    assert (
        retyped.status == "fail"
        and retyped.cause == "T.A is Int64 in Power BI, String in the definition"
    )
    assert removed.status == "fail" and removed.cause == "T.Z (Double) is not in the definition"
    assert no_table.status == "fail" and "table T is not in the dataset" in (no_table.cause or "")
    assert retyped.fix and "D.json" in retyped.fix


def test_bad_settings_fail_first_and_skip_every_other_check() -> None:
    """Nothing else can run without settings: no request is made, each check says why."""
    doctor = Doctor({"POWERBI_AUTH": "password"})
    checks = doctor.run()

    assert [c.key for c in checks] == [
        "settings",
        "token",
        "power-bi-api",
        "workspace",
        "my-workspace",
        "datasets",
        "storage",
    ]
    assert checks[0].status == "fail" and "POWERBI_AUTH" in (checks[0].cause or "")
    assert checks[0].fix == "correct POWERBI_AUTH in the app settings (or local.settings.json)"
    assert all(c.status == "skipped" for c in checks[1:])
    assert checks[1].needs == "settings" and checks[2].needs == "token"
    assert doctor.ok is False


def test_plain_report_shows_cause_and_fix_under_a_failure() -> None:
    stream = io.StringIO()
    report(
        [Check("a", "ok", "fine"), Check("b", "fail", "broken", cause="why", fix="do this")],
        stream,
    )
    assert stream.getvalue().splitlines() == [
        "[ok  ] a: fine",
        "[FAIL] b: broken",
        "       cause: why",
        "       fix:   do this",
        "1 failed, 0 skipped of 2 checks",
    ]


def routing_doctor(tmp_path: Path, routing: dict[str, object] | None, **env: str) -> Doctor:
    """A doctor whose settings passed, over a datasets folder with one definition (D, table
    T) and, when given, its routing file; only the routing and Eventhouse checks are run."""
    folder = tmp_path / "datasets"
    folder.mkdir(parents=True)
    body = {"name": "D", "tables": [{"name": "T", "columns": [{"name": "A", "dataType": "Int64"}]}]}
    (folder / "D.json").write_text(json.dumps(body))
    if routing is not None:
        (folder / "D.destinations.json").write_text(json.dumps(routing))

    def no_client(_: Settings) -> Any:
        raise ConfigError("EVENTHOUSE_URI", "no client in this test")

    doctor = Doctor({"DATASETS_DIR": str(folder), **env}, eventhouse=no_client)
    doctor.settings = Settings.from_env(doctor.env)
    doctor._eventhouse()
    return doctor


def test_without_a_routing_file_there_is_no_eventhouse_check(tmp_path: Path) -> None:
    assert routing_doctor(tmp_path, None).checks == []


def test_routing_files_are_checked_and_eventhouse_checks_need_a_client(tmp_path: Path) -> None:
    powerbi_only = routing_doctor(tmp_path / "a", {"tables": {"T": ["powerbi"]}})
    broken = routing_doctor(tmp_path / "b", {"tables": {"T": ["eventhouse"]}})
    no_client = routing_doctor(
        tmp_path / "c",
        {"default": ["eventhouse"]},
        EVENTHOUSE_URI="https://h.kusto.windows.net",
        EVENTHOUSE_DATABASE="Db",
    )

    assert [(c.key, c.status, c.detail) for c in powerbi_only.checks] == [
        ("routing:D", "ok", "T: powerbi")
    ]
    (check,) = broken.checks
    assert (check.key, check.status) == ("routing:D", "fail")
    assert "tables.T: routes rows to the Eventhouse, but" in (check.cause or "")
    assert "EVENTHOUSE_URI" in (check.cause or "")
    assert check.fix and check.fix.startswith("set EVENTHOUSE_URI in the app settings, or ")
    assert "python -m shared migrate --dataset D" in check.fix
    assert [(c.key, c.status) for c in no_client.checks] == [
        ("routing:D", "ok"),
        ("eventhouse", "fail"),
        ("eventhouse:D", "skipped"),
    ]
    assert no_client.checks[0].detail == "T: eventhouse (KQL database Db)"
