"""Unit tests for shared.settings: app settings read once into a frozen, checked object."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.settings import CLOUDS, Settings, is_loopback

ROOT = Path(__file__).resolve().parents[2]

SECRET = "s3cr3t-V4lue-that-must-never-be-logged"
STATIC_TOKEN = "static-token-that-must-never-be-logged"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT = "11111111-2222-3333-4444-555555555555"

#: §1 of reference/powerbi-push-api.md (national-clouds table): API root without its trailing
#: "/", the token resource (the scopeBase without "/.default") and the authority host.
CLOUD_TABLE = {
    "Public": (
        "https://api.powerbi.com",
        "https://analysis.windows.net/powerbi/api",
        "https://login.microsoftonline.com",
    ),
    "USGov": (
        "https://api.powerbigov.us",
        "https://analysis.usgovcloudapi.net/powerbi/api",
        "https://login.microsoftonline.com",
    ),
    "USGovHigh": (
        "https://api.high.powerbigov.us",
        "https://high.analysis.usgovcloudapi.net/powerbi/api",
        "https://login.microsoftonline.us",
    ),
    "USGovDoD": (
        "https://api.mil.powerbigov.us",
        "https://mil.analysis.usgovcloudapi.net/powerbi/api",
        "https://login.microsoftonline.us",
    ),
    "China": (
        "https://api.powerbi.cn",
        "https://analysis.chinacloudapi.cn/powerbi/api",
        "https://login.chinacloudapi.cn",
    ),
}


def service_principal(**extra: str) -> dict[str, str]:
    env = {
        "POWERBI_AUTH": "service_principal",
        "POWERBI_CLIENT_ID": CLIENT,
        "POWERBI_TENANT_ID": TENANT,
        "POWERBI_CLIENT_SECRET": SECRET,
    }
    env.update(extra)
    return {name: value for name, value in env.items() if value != "<unset>"}


def config_error(env: dict[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    return caught.value


# --- defaults and clouds ----------------------------------------------------------------------


def test_defaults() -> None:
    """With no settings: Public cloud, its API root and resource, managed identity."""
    settings = Settings.from_env({})

    assert settings.cloud == "Public"
    assert settings.api_root == "https://api.powerbi.com"
    assert settings.resource == "https://analysis.windows.net/powerbi/api"
    assert settings.auth_mode == "managed_identity"
    assert settings.authority is None
    assert settings.client_secret is None
    assert settings.static_token is None
    assert settings.request_timeout == 30.0
    assert settings.quota_time_scale == 1.0
    assert settings.datasets_dir == ROOT / "datasets"


def test_blank_settings_count_as_unset() -> None:
    """A setting holding only blanks is treated as not set."""
    settings = Settings.from_env(
        {"POWERBI_CLOUD": "  ", "POWERBI_API_URL": "", "POWERBI_AUTH": " "}
    )

    assert settings.cloud == "Public"
    assert settings.api_root == "https://api.powerbi.com"
    assert settings.auth_mode == "managed_identity"


def test_clouds_are_exactly_the_reference_table() -> None:
    """CLOUDS holds the five clouds of the national-clouds table and no others."""
    assert set(CLOUDS) == set(CLOUD_TABLE)


@pytest.mark.parametrize("name", list(CLOUD_TABLE))
def test_cloud_endpoints_match_the_reference_table(name: str) -> None:
    """Each cloud's API root, resource, scope and authority host are the documented ones."""
    api_root, resource, authority_host = CLOUD_TABLE[name]
    cloud = CLOUDS[name]

    assert cloud.api_root == api_root
    assert cloud.resource == resource
    assert cloud.scope == f"{resource}/.default"
    assert cloud.authority_host == authority_host


@pytest.mark.parametrize("name", list(CLOUD_TABLE))
def test_cloud_setting_selects_its_endpoints(name: str) -> None:
    """POWERBI_CLOUD picks the API root, resource and authority host of that cloud."""
    api_root, resource, authority_host = CLOUD_TABLE[name]

    settings = Settings.from_env(service_principal(POWERBI_CLOUD=name))

    assert settings.cloud == name
    assert settings.api_root == api_root
    assert settings.resource == resource
    assert settings.authority == f"{authority_host}/{TENANT}"


@pytest.mark.parametrize("name", ["Germany", "public", "GCC", "Commercial"])
def test_unknown_cloud_is_a_config_error(name: str) -> None:
    """An unknown POWERBI_CLOUD is a ConfigError naming POWERBI_CLOUD."""
    error = config_error({"POWERBI_CLOUD": name})

    assert error.setting == "POWERBI_CLOUD"
    assert "POWERBI_CLOUD" in str(error)


# --- API URL ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.example.test", "https://api.example.test"),
        ("https://api.example.test/", "https://api.example.test"),
        ("https://api.example.test//", "https://api.example.test"),
        ("https://api.example.test/prefix/", "https://api.example.test/prefix"),
    ],
)
def test_api_url_overrides_and_loses_its_trailing_slash(url: str, expected: str) -> None:
    """POWERBI_API_URL replaces the cloud's API root, without a trailing "/"."""
    assert Settings.from_env({"POWERBI_API_URL": url}).api_root == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://api.powerbi.com",
        "http://10.0.0.5:5300",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
        "http://[::2]:5",
    ],
)
def test_http_to_a_non_loopback_host_is_a_config_error(url: str) -> None:
    """Plain http to anything but a loopback address is refused, naming POWERBI_API_URL."""
    error = config_error({"POWERBI_API_URL": url})

    assert error.setting == "POWERBI_API_URL"


@pytest.mark.parametrize("url", ["api.powerbi.com", "ftp://api.powerbi.com", "https://", "/v1.0"])
def test_api_url_that_is_not_an_http_url_is_a_config_error(url: str) -> None:
    """A POWERBI_API_URL without an http(s) scheme and host is refused, naming it."""
    assert config_error({"POWERBI_API_URL": url}).setting == "POWERBI_API_URL"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5300",
        "http://127.0.0.1:5300/",
        "http://127.8.9.10",
        "http://localhost:1",
        "http://LOCALHOST:1",
        "http://[::1]:5",
    ],
)
def test_http_to_a_loopback_host_is_allowed(url: str) -> None:
    """Plain http is allowed for a loopback address (the local emulator)."""
    settings = Settings.from_env({"POWERBI_API_URL": url})

    assert settings.api_root == url.rstrip("/")
    assert is_loopback(url)


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1", True),
        ("http://127.255.255.254:80", True),
        ("http://localhost", True),
        ("http://[::1]", True),
        ("https://api.powerbi.com", False),
        ("http://128.0.0.1", False),
        ("http://localhost.evil.test", False),
        ("http://0.0.0.0", False),
        ("not a url", False),
    ],
)
def test_is_loopback(url: str, loopback: bool) -> None:
    """Only localhost, 127.0.0.0/8 and ::1 are loopback."""
    assert is_loopback(url) is loopback


# --- auth modes -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["msi", "ServicePrincipal", "token", "MANAGED_IDENTITY"])
def test_unknown_auth_mode_is_a_config_error(mode: str) -> None:
    """An unknown POWERBI_AUTH is a ConfigError naming POWERBI_AUTH."""
    assert config_error({"POWERBI_AUTH": mode}).setting == "POWERBI_AUTH"


def test_service_principal_with_a_secret() -> None:
    """A service principal with client id, tenant and secret gets <authority_host>/<tenant>."""
    settings = Settings.from_env(service_principal())

    assert settings.auth_mode == "service_principal"
    assert settings.client_id == CLIENT
    assert settings.tenant_id == TENANT
    assert settings.client_secret == SECRET
    assert settings.authority == f"https://login.microsoftonline.com/{TENANT}"


def test_service_principal_with_a_certificate(tmp_path: Path) -> None:
    """A service principal may use a certificate file instead of a secret."""
    certificate = tmp_path / "sp.pem"
    certificate.write_text("-----BEGIN PRIVATE KEY-----\n", encoding="utf-8")

    settings = Settings.from_env(
        service_principal(
            POWERBI_CLIENT_SECRET="<unset>", POWERBI_CLIENT_CERTIFICATE_PATH=str(certificate)
        )
    )

    assert settings.client_certificate_path == str(certificate)
    assert settings.client_secret is None


def test_service_principal_explicit_authority_wins() -> None:
    """POWERBI_AUTHORITY_URL replaces the computed authority."""
    authority = "https://login.microsoftonline.us/contoso.onmicrosoft.us"

    settings = Settings.from_env(service_principal(POWERBI_AUTHORITY_URL=authority))

    assert settings.authority == authority


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ({"POWERBI_CLIENT_ID": "<unset>"}, "POWERBI_CLIENT_ID"),
        ({"POWERBI_CLIENT_ID": "  "}, "POWERBI_CLIENT_ID"),
        ({"POWERBI_TENANT_ID": "<unset>"}, "POWERBI_TENANT_ID"),
        ({"POWERBI_CLIENT_SECRET": "<unset>"}, "POWERBI_CLIENT_SECRET"),
        ({"POWERBI_CLIENT_CERTIFICATE_PATH": __file__}, "POWERBI_CLIENT_SECRET"),
        (
            {"POWERBI_CLIENT_SECRET": "<unset>", "POWERBI_CLIENT_CERTIFICATE_PATH": "/no/such.pem"},
            "POWERBI_CLIENT_CERTIFICATE_PATH",
        ),
    ],
    ids=[
        "no-client-id",
        "blank-client-id",
        "no-tenant",
        "neither-secret-nor-certificate",
        "both-secret-and-certificate",
        "certificate-missing",
    ],
)
def test_service_principal_config_errors_name_the_setting(
    override: dict[str, str], setting: str
) -> None:
    """A service principal missing a piece, or given both credentials, names that setting."""
    error = config_error(service_principal(**override))

    assert error.setting == setting
    assert setting in str(error)
    assert SECRET not in str(error)


def test_secret_and_certificate_error_mentions_both() -> None:
    """The 'exactly one credential' error names both settings in its message."""
    error = config_error(service_principal(POWERBI_CLIENT_CERTIFICATE_PATH=__file__))

    assert "POWERBI_CLIENT_SECRET" in str(error)
    assert "POWERBI_CLIENT_CERTIFICATE_PATH" in str(error)


def test_managed_identity_needs_no_credentials() -> None:
    """Managed identity needs no client id, tenant or secret and has no authority."""
    settings = Settings.from_env({"POWERBI_AUTH": "managed_identity"})

    assert settings.auth_mode == "managed_identity"
    assert settings.authority is None


def test_static_token_against_a_loopback_api() -> None:
    """Static mode works with a token and a loopback API URL (the emulator)."""
    settings = Settings.from_env(
        {
            "POWERBI_AUTH": "static",
            "POWERBI_STATIC_TOKEN": STATIC_TOKEN,
            "POWERBI_API_URL": "http://127.0.0.1:5300",
        }
    )

    assert settings.auth_mode == "static"
    assert settings.static_token == STATIC_TOKEN


def test_static_mode_requires_a_token() -> None:
    """Static mode without POWERBI_STATIC_TOKEN is a ConfigError naming it."""
    error = config_error({"POWERBI_AUTH": "static", "POWERBI_API_URL": "http://localhost:5300"})

    assert error.setting == "POWERBI_STATIC_TOKEN"


@pytest.mark.parametrize("url", [None, "https://api.powerbi.com", "https://emulator.example.test"])
def test_static_mode_requires_a_loopback_api(url: str | None) -> None:
    """A static token may only be sent to a loopback API URL."""
    env = {"POWERBI_AUTH": "static", "POWERBI_STATIC_TOKEN": STATIC_TOKEN}
    if url is not None:
        env["POWERBI_API_URL"] = url

    error = config_error(env)

    assert error.setting == "POWERBI_AUTH"
    assert STATIC_TOKEN not in str(error)


# --- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "0.0", "-0.5", "nan", "1s"])
def test_timeout_must_be_a_positive_number(raw: str) -> None:
    """POWERBI_TIMEOUT_SECONDS that is not a number above 0 is a ConfigError naming it."""
    error = config_error({"POWERBI_TIMEOUT_SECONDS": raw})

    assert error.setting == "POWERBI_TIMEOUT_SECONDS"


@pytest.mark.parametrize(("raw", "seconds"), [("0.5", 0.5), (" 45 ", 45.0), ("120", 120.0)])
def test_timeout_accepts_positive_numbers(raw: str, seconds: float) -> None:
    """POWERBI_TIMEOUT_SECONDS takes any number above 0."""
    assert Settings.from_env({"POWERBI_TIMEOUT_SECONDS": raw}).request_timeout == seconds


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "5m", "1,5"])
def test_max_retry_after_must_be_a_positive_number(raw: str) -> None:
    """POWERBI_MAX_RETRY_AFTER_SECONDS that is not a number above 0 is a ConfigError naming
    it."""
    error = config_error({"POWERBI_MAX_RETRY_AFTER_SECONDS": raw})

    assert error.setting == "POWERBI_MAX_RETRY_AFTER_SECONDS"


@pytest.mark.parametrize(("raw", "seconds"), [(None, 300.0), ("60", 60.0), (" 900.5 ", 900.5)])
def test_max_retry_after_defaults_to_300_seconds(raw: str | None, seconds: float) -> None:
    """The Retry-After cap is 300 s unless POWERBI_MAX_RETRY_AFTER_SECONDS says otherwise."""
    env = {} if raw is None else {"POWERBI_MAX_RETRY_AFTER_SECONDS": raw}

    assert Settings.from_env(env).max_retry_after == seconds


def test_max_retry_after_reaches_the_one_retry_policy() -> None:
    """The process's ingestor and its Power BI client share one retry policy, built with the
    cap from the settings."""
    from shared.runtime import build_ingestor

    settings = Settings.from_env({"POWERBI_MAX_RETRY_AFTER_SECONDS": "42"})
    ingestor = build_ingestor(settings, {}, dead_letters=False)

    assert ingestor.retry.max_retry_after == 42.0
    assert ingestor.client.retry is ingestor.retry  # type: ignore[attr-defined]


@pytest.mark.parametrize("raw", ["fast", "0", "-60"])
def test_quota_time_scale_must_be_a_positive_number(raw: str) -> None:
    """POWERBI_QUOTA_TIME_SCALE that is not a number above 0 is a ConfigError naming it."""
    assert config_error({"POWERBI_QUOTA_TIME_SCALE": raw}).setting == "POWERBI_QUOTA_TIME_SCALE"


def test_other_settings_are_read() -> None:
    """Workspace, CA bundle, resource and datasets directory come from their settings."""
    settings = Settings.from_env(
        {
            "POWERBI_WORKSPACE_ID": "f089354e-8366-4e18-aea3-4cb4a3a50b48",
            "POWERBI_WORKSPACE_NAME": "sample group",
            "POWERBI_CA_BUNDLE": "/etc/ssl/emulator.pem",
            "POWERBI_RESOURCE": "https://analysis.example.test/powerbi/api",
            "DATASETS_DIR": "/srv/datasets",
            "POWERBI_QUOTA_TIME_SCALE": "60",
        }
    )

    assert settings.workspace_id == "f089354e-8366-4e18-aea3-4cb4a3a50b48"
    assert settings.workspace_name == "sample group"
    assert settings.ca_bundle == "/etc/ssl/emulator.pem"
    assert settings.resource == "https://analysis.example.test/powerbi/api"
    assert settings.datasets_dir == Path("/srv/datasets")
    assert settings.quota_time_scale == 60.0


# --- describe and immutability ----------------------------------------------------------------


def test_describe_never_shows_the_secret() -> None:
    """describe() says a secret is set but never shows it."""
    settings = Settings.from_env(service_principal())

    summary = settings.describe()

    assert SECRET not in repr(summary)
    assert summary["client_secret"] == "set"
    assert summary["client_id"] == CLIENT
    assert summary["api_root"] == "https://api.powerbi.com"


def test_describe_never_shows_the_static_token() -> None:
    """describe() says a static token is set but never shows it."""
    settings = Settings.from_env(
        {
            "POWERBI_AUTH": "static",
            "POWERBI_STATIC_TOKEN": STATIC_TOKEN,
            "POWERBI_API_URL": "http://localhost:5300",
        }
    )

    summary = settings.describe()

    assert STATIC_TOKEN not in repr(summary)
    assert summary["static_token"] == "set"


def test_describe_without_credentials() -> None:
    """describe() reports absent credentials as None."""
    summary = Settings.from_env({}).describe()

    assert summary["client_secret"] is None
    assert summary["static_token"] is None
    assert summary["auth_mode"] == "managed_identity"


def test_settings_are_frozen() -> None:
    """Settings cannot be changed once read."""
    settings = Settings.from_env({})

    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.api_root = "https://evil.example.test"  # type: ignore[misc]


def test_from_env_does_not_modify_the_mapping() -> None:
    """Reading settings leaves the given mapping untouched."""
    env = service_principal()
    before = dict(env)

    Settings.from_env(env)

    assert env == before


# --- the Power BI surface ---------------------------------------------------------------------


def test_frontdoor_settings_and_their_defaults() -> None:
    """Keys are a comma-separated list (closed when none); partial rows and Delete Rows are
    off unless set; describe() counts the keys and never shows one."""
    closed = Settings.from_env({})
    settings = Settings.from_env(
        {
            "FRONTDOOR_KEYS": " k-one , k-two,,",
            "FRONTDOOR_PARTIAL_ROWS": "TRUE",
            "FRONTDOOR_ALLOW_DELETE_ROWS": "0",
        }
    )

    assert (closed.frontdoor_keys, closed.frontdoor_partial_rows) == ((), False)
    assert closed.frontdoor_allow_delete_rows is False
    assert settings.frontdoor_keys == ("k-one", "k-two")
    assert settings.frontdoor_partial_rows is True
    assert settings.frontdoor_allow_delete_rows is False
    described = settings.describe()
    assert described["frontdoor_keys"] == 2
    assert "k-one" not in repr(described)


def test_a_frontdoor_flag_that_is_not_a_boolean_is_named() -> None:
    error = config_error({"FRONTDOOR_PARTIAL_ROWS": "yes please"})
    assert error.setting == "FRONTDOOR_PARTIAL_ROWS"
    assert "true or false" in str(error)
