"""The Eventhouse settings (issue 18): optional until a table is routed there, URLs that tokens
may travel to, the ``ingest-`` rule, the identity shared with Power BI unless set apart."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import Settings, ingest_uri_for

FABRIC = "https://trd-n1uzagn9dwt2sgr4vb.z3.kusto.fabric.microsoft.com"


def config_error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    return caught.value


def test_nothing_eventhouse_is_required_until_a_table_is_routed_there() -> None:
    settings = Settings.from_env({})
    assert settings.eventhouse is None
    assert settings.describe()["eventhouse"] is None
    with pytest.raises(ConfigError) as caught:
        settings.require_eventhouse()
    assert caught.value.setting == "EVENTHOUSE_URI"


def test_a_fabric_eventhouse_with_the_defaults() -> None:
    """Fabric's List KQL Databases example: queryServiceUri and ingestionServiceUri differ by the
    ``ingest-`` prefix (api-kusto-pull-destination.md in MicrosoftDocs/fabric-docs)."""
    settings = Settings.from_env(
        {
            "EVENTHOUSE_URI": FABRIC + "/",
            "EVENTHOUSE_DATABASE": "Sales",
            "POWERBI_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
        }
    )
    eventhouse = settings.require_eventhouse()
    assert eventhouse.uri == FABRIC
    assert (
        eventhouse.ingest_uri
        == "https://ingest-trd-n1uzagn9dwt2sgr4vb.z3.kusto.fabric.microsoft.com"
    )
    assert eventhouse.database == "Sales"
    assert eventhouse.auth_mode == "managed_identity"
    assert eventhouse.client_id == "11111111-1111-1111-1111-111111111111"
    assert eventhouse.is_fabric
    assert settings.describe()["eventhouse"] == eventhouse.describe()
    assert (eventhouse.timeout, eventhouse.queued_file_bytes) == (60.0, 16 * 1024**2)


def test_its_own_identity_and_ingest_uri() -> None:
    eventhouse = Settings.from_env(
        {
            "EVENTHOUSE_URI": "https://help.westeurope.kusto.windows.net",
            "EVENTHOUSE_INGEST_URI": "https://ingest-elsewhere.westeurope.kusto.windows.net",
            "EVENTHOUSE_CLIENT_ID": "22222222-2222-2222-2222-222222222222",
            "POWERBI_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
        }
    ).require_eventhouse()
    assert eventhouse.ingest_uri == "https://ingest-elsewhere.westeurope.kusto.windows.net"
    assert eventhouse.client_id == "22222222-2222-2222-2222-222222222222"
    assert not eventhouse.is_fabric


@pytest.mark.parametrize(
    ("uri", "ingest"),
    [
        ("https://help.kusto.windows.net", "https://ingest-help.kusto.windows.net"),
        ("https://ingest-help.kusto.windows.net", "https://ingest-help.kusto.windows.net"),
        ("http://127.0.0.1:5300", "http://127.0.0.1:5300"),
        ("http://localhost:5300", "http://localhost:5300"),
        ("http://[::1]:5300", "http://[::1]:5300"),
    ],
)
def test_the_ingest_rule_spares_an_emulator(uri: str, ingest: str) -> None:
    """As azure-kusto-ingest's get_ingestion_endpoint: no prefix for localhost or an IP."""
    assert ingest_uri_for(uri) == ingest
    assert Settings.from_env({"EVENTHOUSE_URI": uri}).require_eventhouse().ingest_uri == ingest


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EVENTHOUSE_URI", "http://help.kusto.windows.net"),
        ("EVENTHOUSE_URI", "ftp://help.kusto.windows.net"),
        ("EVENTHOUSE_URI", "help.kusto.windows.net"),
        ("EVENTHOUSE_URI", "https://user@help.kusto.windows.net"),
        ("EVENTHOUSE_URI", "https://help.kusto.windows.net/Samples"),
        ("EVENTHOUSE_INGEST_URI", "http://ingest-help.kusto.windows.net"),
        ("EVENTHOUSE_AUTH", "password"),
        ("EVENTHOUSE_DATABASE", "Sales;drop"),
        ("EVENTHOUSE_TIMEOUT_SECONDS", "0"),
        ("EVENTHOUSE_TIMEOUT_SECONDS", "soon"),
        ("EVENTHOUSE_QUEUED_FILE_BYTES", "-1"),
        ("EVENTHOUSE_QUEUED_FILE_BYTES", "16MB"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_it(name: str, value: str) -> None:
    env = {"EVENTHOUSE_URI": "https://help.kusto.windows.net", name: value}
    assert config_error(env).setting == name


def test_no_eventhouse_setting_is_read_without_its_uri() -> None:
    """A stray EVENTHOUSE_AUTH is not an error while no Eventhouse is configured."""
    assert Settings.from_env({"EVENTHOUSE_AUTH": "password"}).eventhouse is None


def test_the_auth_mode_follows_powerbi_unless_set() -> None:
    env = {
        "POWERBI_API_URL": "http://127.0.0.1:5300",
        "POWERBI_AUTH": "static",
        "POWERBI_STATIC_TOKEN": "emulator-token",
        "EVENTHOUSE_URI": "http://127.0.0.1:5300",
    }
    assert Settings.from_env(env).require_eventhouse().auth_mode == "static"
    env["EVENTHOUSE_AUTH"] = "managed_identity"
    assert Settings.from_env(env).require_eventhouse().auth_mode == "managed_identity"


@pytest.mark.parametrize(
    "env",
    [
        {"EVENTHOUSE_URI": FABRIC},
        {"EVENTHOUSE_URI": "http://127.0.0.1:5300", "EVENTHOUSE_INGEST_URI": FABRIC},
    ],
)
def test_static_tokens_only_to_loopback(env: dict[str, str]) -> None:
    env = env | {"EVENTHOUSE_AUTH": "static", "POWERBI_STATIC_TOKEN": "t"}
    assert config_error(env).setting == "EVENTHOUSE_AUTH"


def test_static_needs_the_token() -> None:
    env = {"EVENTHOUSE_URI": "http://127.0.0.1:5300", "EVENTHOUSE_AUTH": "static"}
    assert config_error(env).setting == "POWERBI_STATIC_TOKEN"


def test_a_service_principal_uses_the_powerbi_credentials() -> None:
    env = {
        "EVENTHOUSE_URI": FABRIC,
        "EVENTHOUSE_AUTH": "service_principal",
        "POWERBI_CLIENT_ID": "app",
        "POWERBI_TENANT_ID": "contoso.onmicrosoft.com",
        "POWERBI_CLIENT_SECRET": "s3cret",
    }
    eventhouse = Settings.from_env(env).require_eventhouse()
    assert eventhouse.authority == "https://login.microsoftonline.com/contoso.onmicrosoft.com"
    assert eventhouse.client_id == "app"
    assert "s3cret" not in repr(Settings.from_env(env).describe())


@pytest.mark.parametrize(
    ("missing", "setting"),
    [
        ("POWERBI_CLIENT_ID", "EVENTHOUSE_CLIENT_ID"),
        ("POWERBI_TENANT_ID", "POWERBI_TENANT_ID"),
        ("POWERBI_CLIENT_SECRET", "POWERBI_CLIENT_SECRET"),
    ],
)
def test_a_service_principal_missing_a_credential(missing: str, setting: str) -> None:
    env = {
        "EVENTHOUSE_URI": FABRIC,
        "EVENTHOUSE_AUTH": "service_principal",
        "POWERBI_CLIENT_ID": "app",
        "POWERBI_TENANT_ID": "contoso.onmicrosoft.com",
        "POWERBI_CLIENT_SECRET": "s3cret",
    }
    del env[missing]
    assert config_error(env).setting == setting
