"""The deployment files (infra/, azure.yaml, .github/workflows/) are checked as code.

- every ``infra/**/*.bicep`` parses with pycep (the Bicep compiler is not on PyPI);
- checkov (framework bicep) finds no failed check, each skip carries its reason beside the
  resource, and a template with a known flaw does fail (the check is not vacuous);
- the app settings the template sets are the settings ``shared/settings.py`` reads, but for the
  differences listed below with their reasons; the storage names agree with the code's defaults;
- the workflows pass actionlint and zizmor, pin every action to a commit and deploy with OIDC only.

The tools run from ``.venv-iac`` (``make setup``; requirements-iac.txt says why it is apart).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from tests.unit.test_settings_documented import read_settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
WORKFLOWS = ROOT / ".github" / "workflows"
IAC_BIN = ROOT / ".venv-iac" / "bin"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

#: Settings shared/settings.py reads that the template leaves to the code's default, and why.
LEFT_TO_DEFAULTS: dict[str, str] = {
    "POWERBI_API_URL": "derived from POWERBI_CLOUD; set only for a proxy or the emulator",
    "POWERBI_RESOURCE": "derived from POWERBI_CLOUD",
    "POWERBI_AUTHORITY_URL": "service principal mode only; the template uses the managed identity",
    "POWERBI_TENANT_ID": "service principal mode only",
    "POWERBI_CLIENT_SECRET": "service principal mode only (a secret the template never holds)",
    "POWERBI_CLIENT_CERTIFICATE_PATH": "service principal mode only",
    "POWERBI_STATIC_TOKEN": "the local emulator only (refused for any non-loopback API)",
    "POWERBI_CA_BUNDLE": "a private CA for a proxy or the emulator; Azure uses public CAs",
    "POWERBI_QUOTA_TIME_SCALE": "tests and benchmarks against the emulator only",
    "DATASETS_DIR": "defaults to the datasets/ folder deployed with the code",
    "POWERBI_TIMEOUT_SECONDS": "tuning knob; the default suits Power BI",
    "EVENTHOUSE_TIMEOUT_SECONDS": "tuning knob; the default suits a KQL database",
    "EVENTHOUSE_QUEUED_FILE_BYTES": "tuning knob: latency against bulk ingestion",
    "POWERBI_MAX_RETRY_AFTER_SECONDS": "tuning knob",
    "HTTP_MAX_BODY_BYTES": "tuning knob",
    "HTTP_TIME_BUDGET_SECONDS": "tuning knob, under the front end's 230 s",
    "HTTP_LINGER_SECONDS": "tuning knob",
    "HTTP_GROUP_COMMIT": "tuning knob",
    "QUEUE_LINGER_SECONDS": "tuning knob",
    "QUEUE_MAX_WAIT_SECONDS": "tuning knob",
    "QUEUE_TIME_BUDGET_SECONDS": "tuning knob",
    "BLOB_TIME_BUDGET_SECONDS": "tuning knob, under host.json's functionTimeout",
    "BLOB_MAX_BYTES": "tuning knob",
    "FRONTDOOR_PARTIAL_ROWS": "off by default (Power BI's all-or-nothing Add Rows)",
    "FRONTDOOR_ALLOW_DELETE_ROWS": "off by default: deleting rows is an operator's choice",
    "EVENTHOUSE_INGEST_URI": "derived from EVENTHOUSE_URI (the 'ingest-' rule of ADX and Fabric)",
}

#: Settings the template sets that shared/settings.py does not read, and who reads them.
HOST_SETTINGS: dict[str, str] = {
    "AzureWebJobsStorage__credential": "the host (identity-based host storage)",
    "AzureWebJobsStorage__clientId": "the host, the blob binding and shared/stores/storage.py",
    "AzureWebJobsStorage__blobServiceUri": "the host and shared/stores/storage.py",
    "AzureWebJobsStorage__queueServiceUri": "the host and shared/stores/storage.py",
    "AzureWebJobsStorage__tableServiceUri": "the host and shared/stores/storage.py",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "the host (telemetry)",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "the host (Entra-authenticated telemetry)",
}


def iac_tool(name: str) -> Path:
    """A tool of ``.venv-iac``; the test fails (not skips) without it: make setup installs it."""
    path = IAC_BIN / name
    assert path.exists(), f"{path} is missing: run `make setup` (requirements-iac.txt)"
    return path


def iac_python(code: str, *args: str) -> Any:
    """Run ``code`` with .venv-iac's Python (``sys.argv[1:]`` = ``args``); its stdout as JSON."""
    done = subprocess.run(
        [str(iac_tool("python")), "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


_PARSE = """
import json, sys
from pathlib import Path
from pycep import BicepParser
print(json.dumps(BicepParser().parse(file_path=Path(sys.argv[1])), default=str))
"""

_YAML = """
import json, sys, yaml
print(json.dumps(yaml.safe_load(open(sys.argv[1], encoding="utf-8")), default=str))
"""


@cache
def parsed(path: Path) -> dict[str, Any]:
    """The pycep JSON of a Bicep file."""
    tree: dict[str, Any] = iac_python(_PARSE, str(path))
    return tree


@cache
def yaml_file(path: Path) -> dict[str, Any]:
    """A YAML file as JSON (PyYAML is in .venv-iac, not in the app's environment)."""
    data: dict[str, Any] = iac_python(_YAML, str(path))
    return data


def main_bicep() -> dict[str, Any]:
    return parsed(INFRA / "main.bicep")


def bicep_app_settings() -> set[str]:
    """The names of the function app's settings: the keys of ``var appSettings``."""
    return set(main_bicep()["variables"]["appSettings"]["value"])


def checkov(directory: Path) -> dict[str, Any]:
    """checkov's JSON report over ``directory`` (framework bicep, nothing downloaded)."""
    done = subprocess.run(
        [
            str(iac_tool("checkov")),
            "--directory",
            str(directory),
            "--framework",
            "bicep",
            "--output",
            "json",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    assert report.get("check_type") == "bicep", done.stdout[:500]
    return report


# --- Bicep ------------------------------------------------------------------------------------


def test_the_templates_are_found() -> None:
    assert INFRA / "main.bicep" in BICEP_FILES
    assert len(BICEP_FILES) >= 2


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_bicep_file_parses(path: Path) -> None:
    tree = parsed(path)
    assert tree["resources"], f"{path} declares no resource"


def test_checkov_finds_no_failed_check_and_every_skip_says_why() -> None:
    report = checkov(INFRA)
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['resource']} {c['file_path']}:{c['file_line_range']}"
        for c in report["results"]["failed_checks"]
    ]
    assert summary["failed"] == 0, "\n".join(failed)
    assert summary["parsing_errors"] == 0, report["results"]["parsing_errors"]
    assert summary["passed"] >= 15, summary  # it really looked at the resources
    # Every skip comment is used: a check that no longer fails loses its skip.
    written = sum(p.read_text(encoding="utf-8").count("checkov:skip=") for p in BICEP_FILES)
    assert summary["skipped"] == written, summary
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped["check_result"].get("suppress_comment", "")
        assert len(reason) > 20 and reason != "No comment provided", skipped["check_id"]


def test_checkov_fails_a_template_with_a_flaw(tmp_path: Path) -> None:
    """The same scan over a copy that allows TLS 1.0 reports that check (CKV_AZURE_44)."""
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    main = copy / "main.bicep"
    text = main.read_text(encoding="utf-8")
    flawed = text.replace("minimumTlsVersion: 'TLS1_2'", "minimumTlsVersion: 'TLS1_0'")
    assert flawed != text
    main.write_text(flawed, encoding="utf-8")
    failed = {c["check_id"] for c in checkov(copy)["results"]["failed_checks"]}
    assert "CKV_AZURE_44" in failed, failed


def test_the_storage_account_takes_no_shared_key() -> None:
    storage = main_bicep()["resources"]["storage"]["config"]["properties"]
    assert storage["allowSharedKeyAccess"] is False
    assert storage["allowBlobPublicAccess"] is False


def test_the_app_runs_python_311_on_flex_consumption_with_its_identity() -> None:
    resources = main_bicep()["resources"]
    assert resources["plan"]["config"]["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    app = resources["app"]["config"]
    assert app["identity"]["type"] == "UserAssigned"
    config = app["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    assert config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"


# --- Settings ---------------------------------------------------------------------------------


def test_the_settings_the_template_sets_are_the_settings_the_code_reads() -> None:
    """Same set, but for the differences listed (with reasons) in this file."""
    code, template = read_settings(), bicep_app_settings()
    assert code - template == set(LEFT_TO_DEFAULTS), "settings read but neither set nor listed"
    assert template - code == set(HOST_SETTINGS), "settings set but neither read nor listed"


def test_the_template_never_sets_what_flex_consumption_refuses() -> None:
    """https://learn.microsoft.com/azure/azure-functions/functions-app-settings#flex-consumption-plan-deprecations"""
    refused = {
        "FUNCTIONS_WORKER_RUNTIME",
        "FUNCTIONS_EXTENSION_VERSION",
        "WEBSITE_RUN_FROM_PACKAGE",
        "WEBSITE_CONTENTSHARE",
        "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
        "SCM_DO_BUILD_DURING_DEPLOYMENT",
        "ENABLE_ORYX_BUILD",
    }
    assert not refused & bicep_app_settings()


def test_the_storage_the_template_makes_is_the_storage_the_code_uses() -> None:
    """Container, queue and table names: the code's defaults, made by the template and given
    to the app under the same variables."""
    variables = {k: v["value"] for k, v in main_bicep()["variables"].items()}
    defaults = Settings.from_env({})
    assert variables["rowsQueue"] == defaults.rows_queue
    assert variables["ingestContainer"] == defaults.ingest_container
    assert variables["checkpointContainer"] == defaults.checkpoint_container
    assert variables["deadletterContainer"] == defaults.deadletter_container
    assert variables["claimcheckContainer"] == defaults.claimcheck_container
    assert variables["locksContainer"] == defaults.locks_container
    assert variables["pacingTable"] == defaults.pacing_table
    settings = main_bicep()["variables"]["appSettings"]["value"]
    for name, variable in [
        ("ROWS_QUEUE", "rowsQueue"),
        ("INGEST_CONTAINER", "ingestContainer"),
        ("CHECKPOINT_CONTAINER", "checkpointContainer"),
        ("DEADLETTER_CONTAINER", "deadletterContainer"),
        ("CLAIMCHECK_CONTAINER", "claimcheckContainer"),
        ("LOCKS_CONTAINER", "locksContainer"),
        ("PACING_TABLE", "pacingTable"),
    ]:
        assert settings[name] == variable, name
    containers = variables["blobContainers"]
    for variable in ("ingestContainer", "checkpointContainer", "deadletterContainer"):
        assert variable in containers
    for variable in ("claimcheckContainer", "locksContainer", "deploymentContainerName"):
        assert variable in containers
    assert "rowsQueue" in variables["queues"]


def test_secrets_are_secure_parameters_without_defaults() -> None:
    parameters = main_bicep()["parameters"]
    settings = main_bicep()["variables"]["appSettings"]["value"]
    for name, setting in [("frontdoorKeys", "FRONTDOOR_KEYS"), ("webhookSecret", "WEBHOOK_SECRET")]:
        decorators = {d["type"] for d in parameters[name]["decorators"]}
        assert "secure" in decorators, name
        assert parameters[name]["default"] is None, name
        assert settings[setting] == name
    # Secure values never leave through an output.
    outputs = json.dumps(main_bicep()["outputs"])
    assert "frontdoorKeys" not in outputs and "webhookSecret" not in outputs


def test_the_parameters_file_names_only_template_parameters_and_every_required_one() -> None:
    declared = main_bicep()["parameters"]
    given = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(given) <= set(declared)
    required = {name for name, p in declared.items() if p["default"] is None}
    assert required <= set(given), required - set(given)


def test_the_outputs_give_what_the_grant_step_needs() -> None:
    outputs = main_bicep()["outputs"]
    for name in (
        "AZURE_FUNCTION_APP_NAME",
        "AZURE_FUNCTION_APP_URL",
        "IDENTITY_PRINCIPAL_ID",
        "IDENTITY_CLIENT_ID",
        "AZURE_STORAGE_ACCOUNT_NAME",
        "EVENT_GRID_SYSTEM_TOPIC",
    ):
        assert name in outputs, name


def test_the_subscription_script_reads_only_variables_the_template_outputs() -> None:
    script = (INFRA / "scripts" / "subscribe-events.sh").read_text(encoding="utf-8")
    used = set(re.findall(r"\$\{([A-Z_]+):", script))
    assert used, "the scan found nothing"
    assert used <= set(main_bicep()["outputs"]), used - set(main_bicep()["outputs"])


# --- azure.yaml and the workflows -------------------------------------------------------------


def test_azure_yaml_deploys_this_folder_as_the_api_function() -> None:
    project = yaml_file(ROOT / "azure.yaml")
    assert project["services"]["api"] == {"project": ".", "language": "python", "host": "function"}
    hook = project["hooks"]["postdeploy"]["posix"]["run"]
    assert (ROOT / hook).is_file()
    # azd finds the app by this tag.
    assert "'azd-service-name': 'api'" in (INFRA / "main.bicep").read_text(encoding="utf-8")


WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))


def test_the_workflows_pass_actionlint() -> None:
    assert WORKFLOW_FILES
    done = subprocess.run(
        [str(iac_tool("actionlint")), "-no-color", *map(str, WORKFLOW_FILES)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - run: echo ${{ github.no_such_property }}\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [str(iac_tool("actionlint")), "-no-color", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 1 and "no_such_property" in done.stdout, done.stdout


def zizmor(*paths: Path) -> list[dict[str, Any]]:
    """zizmor's findings (JSON) over ``paths``; --offline: only the audits that need no network."""
    done = subprocess.run(
        [str(iac_tool("zizmor")), "--offline", "--format", "json", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.stdout.strip(), done.stderr
    findings: list[dict[str, Any]] = json.loads(done.stdout)
    return findings


def test_the_workflows_pass_zizmor() -> None:
    """A second linter, for security (template injection, credentials persisted by checkout,
    excessive permissions, unpinned actions): zizmor, https://docs.zizmor.sh/audits/."""
    assert [(f["ident"], f["desc"]) for f in zizmor(*WORKFLOW_FILES)] == []


def test_zizmor_rejects_an_injectable_workflow(tmp_path: Path) -> None:
    risky = tmp_path / "risky.yml"
    risky.write_text(
        "on: issues\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n"
        "    permissions: {}\n    steps:\n"
        '      - run: echo "${{ github.event.issue.title }}"\n',
        encoding="utf-8",
    )
    assert "template-injection" in {f["ident"] for f in zizmor(risky)}


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit(path: Path) -> None:
    uses = re.findall(r"uses:\s*(\S+)", path.read_text(encoding="utf-8"))
    assert uses
    for action in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", action), action


def test_the_workflow_deploys_the_tested_zip_with_oidc_and_no_secret() -> None:
    """Deploy runs only after the tests passed, on main, and deploys the zip the test job built
    after them (an artifact), signing in with OIDC: no stored secret anywhere."""
    text = (WORKFLOWS / "ci.yml").read_text(encoding="utf-8")
    assert "secrets." not in text
    jobs = yaml_file(WORKFLOWS / "ci.yml")["jobs"]
    test, deploy = jobs["test"], jobs["deploy"]
    runs = [s.get("run") for s in test["steps"]]
    assert runs.index("bash .ci/run") < runs.index("make package")
    upload = next(s for s in test["steps"] if s.get("uses", "").startswith("actions/upload-"))
    assert upload["with"]["path"] == "dist/function-app.zip"
    assert deploy["needs"] == "test" and "refs/heads/main" in deploy["if"]
    assert deploy["permissions"]["id-token"] == "write"
    assert "id-token" not in test.get("permissions", {})
    steps = {s.get("uses", "").split("@")[0]: s for s in deploy["steps"]}
    assert steps["actions/download-artifact"]["with"]["name"] == upload["with"]["name"]
    login = steps["azure/login"]["with"]
    assert login == {
        "client-id": "${{ vars.AZURE_CLIENT_ID }}",
        "tenant-id": "${{ vars.AZURE_TENANT_ID }}",
        "subscription-id": "${{ vars.AZURE_SUBSCRIPTION_ID }}",
    }
    functions = steps["Azure/functions-action"]["with"]
    assert functions["package"] == "dist/function-app.zip"
    assert functions["sku"] == "flexconsumption" and functions["remote-build"] is False
    assert not any(s.get("run") == "make package" for s in deploy["steps"])
