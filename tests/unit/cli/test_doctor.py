"""The doctor's pure parts: reading a token's claims, telling an app from a user, comparing a
live dataset with its definition by the engine's rule, and what a settings failure skips."""

from __future__ import annotations

import base64
import io
import json

from shared.cli.doctor import Check, Doctor, _compare, identity_of, jwt_claims, report
from shared.engine.schema import DatasetDefinition


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
