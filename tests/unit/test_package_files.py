"""What tools/package.py takes into the zip: the project's real .funcignore applied to a made-up
tree, and the wheel-tag check on the installed dependencies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools.package import PackageError, check_wheels, load_funcignore, select_app_files

ROOT = Path(__file__).resolve().parents[2]


def touch(root: Path, *paths: str) -> None:
    for rel in paths:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x", encoding="utf-8")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copy(ROOT / ".funcignore", tmp_path / ".funcignore")
    touch(
        tmp_path,
        "function_app.py",
        "host.json",
        "requirements.txt",
        "functions/http.py",
        "functions/__pycache__/http.cpython-311.pyc",
        "shared/settings.py",
        "shared/engine/ingest.py",
        "shared/engine/stale.pyc",
        "datasets/SalesMarketing.json",
        "local.settings.json",
        "local.settings.example.json",
        "tests/unit/test_x.py",
        "tools/package.py",
        "dist/function-app.zip",
        "emulator/server.py",
        "devhost/run.py",
        "bench/run.py",
        "infra/main.bicep",
        "node_modules/azurite/package.json",
        ".vscode/settings.json",
        ".github/workflows/ci.yml",
        ".gitignore",
        ".ci/run",
        "__azurite_db_queue__.json",
        "__blobstorage__/blob",
        "requirements-dev.txt",
        "Makefile",
        # A stale local build: the package writes its own from requirements.txt.
        ".python_packages/lib/site-packages/old/__init__.py",
    )
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / ".venv").symlink_to(tmp_path / "elsewhere")
    return tmp_path


def test_funcignore_keeps_the_app_and_drops_development_files(tree: Path) -> None:
    assert select_app_files(tree, load_funcignore(tree), skip=[tree / "dist/function-app.zip"]) == [
        ".funcignore",
        "datasets/SalesMarketing.json",
        "function_app.py",
        "functions/http.py",
        "host.json",
        "local.settings.example.json",
        "requirements.txt",
        "shared/engine/ingest.py",
        "shared/settings.py",
    ]


def test_a_symlink_that_funcignore_lets_through_is_refused(tree: Path) -> None:
    (tree / "shared" / "linked").symlink_to(tree / "elsewhere")
    with pytest.raises(PackageError, match="shared/linked is a symlink"):
        select_app_files(tree, load_funcignore(tree))


def dist_info(site: Path, name: str, *tags: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\n" + "".join(f"Tag: {t}\n" for t in tags))


def test_wheels_for_the_target_image_pass(tmp_path: Path) -> None:
    dist_info(tmp_path, "pure", "py3-none-any")
    dist_info(
        tmp_path, "native", "cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-manylinux2014_x86_64"
    )
    dist_info(tmp_path, "stable_abi", "cp38-abi3-manylinux_2_5_x86_64")
    assert [d.name for d in check_wheels(tmp_path)] == ["native", "pure", "stable_abi"]


@pytest.mark.parametrize(
    "tag",
    [
        "cp311-cp311-win_amd64",
        "cp312-cp312-manylinux_2_17_x86_64",
        "cp311-cp311-manylinux_2_17_aarch64",
        # Newer than manylinux2014 (glibc 2.17): not what pip was asked for.
        "cp311-cp311-manylinux_2_28_x86_64",
        "cp311-cp311-musllinux_1_2_x86_64",
    ],
)
def test_a_wheel_the_image_cannot_load_is_refused(tmp_path: Path, tag: str) -> None:
    dist_info(tmp_path, "pure", "py3-none-any")
    dist_info(tmp_path, "wrong", tag)
    with pytest.raises(PackageError, match=f"wrong 1.0 was installed from {tag}"):
        check_wheels(tmp_path)
