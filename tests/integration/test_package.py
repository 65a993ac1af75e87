"""The deployable zip (``make package``) runs on its own: built, unpacked into an empty folder and
imported by a bare CPython 3.11 that sees only that folder and its ``.python_packages``, it lists
the same functions, triggers, routes and bindings as the source tree.

Building installs the dependencies from the package index (pip's cache makes later runs quicker).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("package_probe.py")
SITE_PACKAGES = ".python_packages/lib/site-packages"

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The interpreter the venv was made from, not the venv's: with -I -S it has the standard library
# and nothing else on its path (no venv site-packages, no user site, no PYTHON* variables).
BASE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def build_zip(out: Path) -> str:
    """``python -m tools.package --out OUT`` as ``make package`` runs it; returns its output."""
    done = subprocess.run(
        [sys.executable, "-m", "tools.package", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def probe(python: str, app_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run package_probe.py on ``app_dir`` with an empty environment: no setting at all."""
    return subprocess.run(
        [python, *flags, str(PROBE), str(app_dir)],
        cwd=app_dir,
        env={},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def listing(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "function-app.zip"
    printed = build_zip(out)
    assert f"{out}:" in printed and " files (" in printed  # size and file count are reported
    return out


@pytest.fixture(scope="module")
def unpacked(package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    app_dir = tmp_path_factory.mktemp("wwwroot")
    assert not any(app_dir.iterdir())  # an empty folder: nothing but the zip's contents
    with zipfile.ZipFile(package) as archive:
        archive.extractall(app_dir)
    return app_dir


def test_the_unpacked_zip_imports_alone_and_lists_the_functions_of_the_source_tree(
    unpacked: Path,
) -> None:
    deployed = listing(probe(BASE_PYTHON, unpacked, "-I", "-S"))
    source = listing(probe(sys.executable, ROOT, "-I"))

    # Only the app folder, its site-packages and the base interpreter's standard library.
    stdlib_root = os.path.dirname(sysconfig.get_paths()["stdlib"])
    for entry in deployed["sys_path"]:
        assert entry in (str(unpacked), f"{unpacked}/{SITE_PACKAGES}") or (
            entry.startswith(stdlib_root) and "site-packages" not in entry
        ), entry
    assert "azure" in deployed["site_packages_modules"]

    names = [f["name"] for f in deployed["functions"]]
    assert names == [
        "add_rows",
        "blob_created",
        "doctor",
        "health",
        "ingest_blob",
        "ingest_queue",
        "post_rows",
        "powerbi",
    ]
    routes = {
        b["route"]
        for f in deployed["functions"]
        for b in f["bindings"]
        if b["type"] == "httpTrigger"
    }
    assert routes == {
        "datasets/{dataset}/tables/{table}/rows",
        "rows",
        "health",
        "doctor",
        "v1.0/myorg/{*path}",
    }
    assert deployed["functions"] == source["functions"]


def test_importing_the_app_reads_no_setting_and_uses_no_network(unpacked: Path) -> None:
    deployed = listing(probe(BASE_PYTHON, unpacked, "-I", "-S"))
    example = json.loads((ROOT / "local.settings.example.json").read_text(encoding="utf-8"))
    app_settings = set(example["Values"])
    assert "POWERBI_API_URL" in app_settings  # the example does list the bundle's settings
    assert not app_settings & set(deployed["env_read"]), deployed["env_read"]
    assert deployed["network_attempts"] == []


def test_a_dependency_missing_from_the_zip_breaks_the_import(
    unpacked: Path, tmp_path: Path
) -> None:
    # The check above can fail: the same probe on a copy without msgspec (imported by shared/ at
    # import time) stops with the import error the worker would log.
    broken = tmp_path / "wwwroot"
    shutil.copytree(unpacked, broken)
    shutil.rmtree(broken / SITE_PACKAGES / "msgspec")
    done = probe(BASE_PYTHON, broken, "-I", "-S")
    assert done.returncode != 0
    assert "No module named 'msgspec'" in done.stderr


def test_the_zip_holds_the_app_and_its_dependencies_and_no_development_files(
    package: Path,
) -> None:
    with zipfile.ZipFile(package) as archive:
        names = archive.namelist()
        infos = archive.infolist()
    for required in (
        "function_app.py",
        "host.json",
        "requirements.txt",
        "functions/http.py",
        "shared/settings.py",
        "datasets/SalesMarketing.json",
        f"{SITE_PACKAGES}/azure/functions/__init__.py",
        f"{SITE_PACKAGES}/msgspec/__init__.py",
    ):
        assert required in names, required
    excluded_roots = ("emulator", "devhost", "tests", "bench", "tools", "dist", ".venv", "infra")
    excluded_roots += ("node_modules", ".git", ".github", ".ci", "docs")
    for name in names:
        parts = name.split("/")
        assert parts[0] not in excluded_roots, name
        assert "__pycache__" not in parts and not name.endswith(".pyc"), name
        assert parts[-1] != "local.settings.json", name
    assert not any(n.startswith(f"{SITE_PACKAGES}/bin/") for n in names)
    assert names == sorted(names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_two_builds_give_the_same_bytes(package: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.zip"
    build_zip(again)
    assert hashlib.sha256(again.read_bytes()).hexdigest() == (
        hashlib.sha256(package.read_bytes()).hexdigest()
    )
