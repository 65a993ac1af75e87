"""Build the deployable zip of the Functions app: ``python -m tools.package [--out PATH]``.

The layout is the one Core Tools' local build and the platform's remote build produce for a Python
app ("Build your Python Azure Functions apps", https://learn.microsoft.com/azure/azure-functions/
python-build-options, "Deployment package considerations" and "Local build"):

- the *contents* of the project folder at the zip root (``function_app.py``, ``host.json``,
  ``functions/``, ``shared/``, ``datasets/``, ``requirements.txt`` ...), less what ``.funcignore``
  excludes ("Exclude development files ... by including them in .funcignore");
- the dependencies of ``requirements.txt`` in ``.python_packages/lib/site-packages`` ("Dependencies
  must be installed into ./.python_packages/lib/site-packages"), built for the production image
  ("Your dependencies must be built on an ubuntu machine using the same python version as the
  production app"): here with pip's cross-platform options, so that only manylinux x86_64 wheels
  for CPython 3.11 are taken and nothing is compiled on the build machine.

Such a zip is deployed with remote build off (``az functionapp deployment source config-zip
--build-remote false``, or ``remote-build: false`` in ``Azure/functions-action`` on Flex
Consumption; same page, "Local build").

The zip is deterministic: entries sorted, every timestamp fixed, permissions normalised, so the
same sources and the same resolved dependency versions give the same bytes.
"""

from __future__ import annotations

import argparse
import io
import os
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pathspec
from packaging.tags import Tag, compatible_tags, cpython_tags, parse_tag

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "dist" / "function-app.zip"

# Where the Functions Python worker looks for the app's packages (python-build-options, above).
SITE_PACKAGES = PurePosixPath(".python_packages/lib/site-packages")

# The Functions Linux image this bundle targets: CPython 3.11 on x86_64 (pyproject's
# requires-python; Flex Consumption runs Python 3.10-3.12 on Linux only).
PYTHON_VERSION = (3, 11)
PIP_PLATFORM = "manylinux2014_x86_64"
# manylinux2014 is manylinux_2_17, and covers the older manylinux_2_12 (manylinux2010) and
# manylinux_2_5 (manylinux1) wheels too (PEP 600, "Legacy manylinux tags"). This is the set pip
# accepts for --platform manylinux2014_x86_64; the tag check below uses the same set.
ACCEPTED_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(17, 4, -1)] + [
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
]

# The earliest time a zip entry can carry (the DOS date format starts in 1980); one fixed value
# makes the archive independent of file modification times.
FIXED_DATE = (1980, 1, 1, 0, 0, 0)


class PackageError(Exception):
    """The package cannot be built as asked (a dependency with no suitable wheel, a symlink...)."""


@dataclass(frozen=True)
class Dependency:
    """One installed distribution and the wheel tags it was installed from."""

    name: str
    version: str
    tags: frozenset[Tag]


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` wrote."""

    out: Path
    size: int
    app_files: int
    dependency_files: int
    dependencies: tuple[Dependency, ...]
    seconds: float

    @property
    def files(self) -> int:
        return self.app_files + self.dependency_files


def load_funcignore(root: Path) -> pathspec.GitIgnoreSpec:
    """The project's ``.funcignore`` read with gitignore semantics (an empty spec if absent)."""
    path = root / ".funcignore"
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    return pathspec.GitIgnoreSpec.from_lines(lines)


def select_app_files(
    root: Path, spec: pathspec.GitIgnoreSpec, skip: Iterable[Path] = ()
) -> list[str]:
    """The project files ``spec`` lets through, as sorted POSIX paths relative to ``root``.

    Directories are matched as ``name/`` and an excluded directory is not entered, as git does
    (a file inside an excluded directory cannot be re-included). ``.python_packages`` is never
    taken from the tree: the build writes it from ``requirements.txt``, and a stale local copy
    would mix two sets of dependencies. A symlink that is not excluded is an error: the platform
    would get either a dangling link or a copy nobody reviewed.
    """
    skipped = {p.resolve() for p in skip}
    selected: list[str] = []
    for current, dirnames, filenames in os.walk(root):
        here = Path(current)
        rel_dir = here.relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        kept_dirs: list[str] = []
        for name in sorted(dirnames):
            rel = prefix + name
            if rel == SITE_PACKAGES.parts[0] or spec.match_file(rel + "/"):
                continue
            if (here / name).is_symlink():
                raise PackageError(f"{rel} is a symlink; list it in .funcignore or replace it")
            kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            rel = prefix + name
            path = here / name
            if spec.match_file(rel) or path.resolve() in skipped:
                continue
            if path.is_symlink():
                raise PackageError(f"{rel} is a symlink; list it in .funcignore or replace it")
            selected.append(rel)
    return sorted(selected)


def accepted_tags() -> frozenset[Tag]:
    """Wheel tags that run on the target image (CPython 3.11, manylinux x86_64, or pure Python)."""
    return frozenset(
        [
            *cpython_tags(PYTHON_VERSION, abis=["cp311"], platforms=ACCEPTED_PLATFORMS),
            *compatible_tags(PYTHON_VERSION, "cp311", platforms=ACCEPTED_PLATFORMS),
        ]
    )


def install_dependencies(requirements: Path, target: Path) -> None:
    """``pip install`` the requirements into ``target`` for the target image, wheels only.

    ``--only-binary=:all:`` with ``--platform``/``--python-version``/``--implementation`` makes pip
    refuse any distribution without a matching wheel instead of building one for this machine.
    ``--no-compile`` keeps ``__pycache__`` out (it would hold this machine's paths).
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-compile",
        "--target",
        str(target),
        "--platform",
        PIP_PLATFORM,
        "--python-version",
        ".".join(map(str, PYTHON_VERSION)),
        "--implementation",
        "cp",
        "--only-binary=:all:",
        "--requirement",
        str(requirements),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise PackageError(
            "pip could not install the dependencies as manylinux x86_64 CPython 3.11 wheels:\n"
            + done.stdout[-4000:]
            + done.stderr[-4000:]
        )


def check_wheels(site_packages: Path) -> tuple[Dependency, ...]:
    """Every installed distribution, checked to come from a wheel the target image can load."""
    accepted = accepted_tags()
    found: list[Dependency] = []
    for dist_info in sorted(site_packages.glob("*.dist-info")):
        metadata = (dist_info / "METADATA").read_text(encoding="utf-8", errors="replace")
        fields = dict(line.split(": ", 1) for line in metadata.splitlines()[:20] if ": " in line)
        wheel = dist_info / "WHEEL"
        tags: set[Tag] = set()
        if wheel.exists():
            for line in wheel.read_text(encoding="utf-8").splitlines():
                if line.startswith("Tag:"):
                    tags.update(parse_tag(line.split(":", 1)[1].strip()))
        dependency = Dependency(
            fields.get("Name", dist_info.name), fields.get("Version", "?"), frozenset(tags)
        )
        if not tags & accepted:
            shown = ", ".join(sorted(str(t) for t in tags)) or "no WHEEL tags"
            raise PackageError(
                f"{dependency.name} {dependency.version} was installed from {shown}, "
                "which the CPython 3.11 manylinux x86_64 image cannot load"
            )
        found.append(dependency)
    if not found:
        raise PackageError(f"no distributions were installed into {site_packages}")
    return tuple(found)


def dependency_files(site_packages: Path) -> list[str]:
    """Files of the installed dependencies, as sorted POSIX paths relative to ``site_packages``.

    ``bin/`` is left out: pip writes console scripts there with this machine's interpreter in
    the shebang, and the worker never runs them. Bytecode is left out whatever its origin.
    """
    files: list[str] = []
    for path in site_packages.rglob("*"):
        rel = path.relative_to(site_packages)
        if rel.parts[0] == "bin" or "__pycache__" in rel.parts or path.suffix == ".pyc":
            continue
        if path.is_symlink():
            raise PackageError(f"dependency file {rel.as_posix()} is a symlink")
        if path.is_file():
            files.append(rel.as_posix())
    return sorted(files)


def write_zip(out: Path, entries: list[tuple[str, Path]]) -> None:
    """Write ``entries`` (archive name, source file) sorted, with fixed dates and modes."""
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for arcname, source in sorted(entries):
            info = zipfile.ZipInfo(arcname, FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so that the mode bits below are honoured on extract
            executable = os.stat(source).st_mode & 0o111
            info.external_attr = (stat.S_IFREG | (0o755 if executable else 0o644)) << 16
            archive.writestr(info, source.read_bytes())
    # Written in one go to a sibling file, then renamed: a failed build leaves no half zip.
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(buffer.getvalue())
    os.replace(partial, out)


def build(out: Path = DEFAULT_OUT, root: Path = ROOT) -> BuildResult:
    """Build the deployable zip of the app at ``root`` into ``out``."""
    started = time.monotonic()
    out = out.resolve()
    app_files = select_app_files(root, load_funcignore(root), skip=[out])
    for required in ("function_app.py", "host.json", "requirements.txt"):
        if required not in app_files:
            raise PackageError(f"{required} is missing from the package (.funcignore excludes it?)")
    with tempfile.TemporaryDirectory(prefix="function-app-") as work:
        site_packages = Path(work) / "site-packages"
        install_dependencies(root / "requirements.txt", site_packages)
        dependencies = check_wheels(site_packages)
        deps = dependency_files(site_packages)
        entries = [(rel, root / rel) for rel in app_files]
        entries += [(str(SITE_PACKAGES / rel), site_packages / rel) for rel in deps]
        write_zip(out, entries)
    return BuildResult(
        out=out,
        size=out.stat().st_size,
        app_files=len(app_files),
        dependency_files=len(deps),
        dependencies=dependencies,
        seconds=time.monotonic() - started,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: build the zip and print its size, file count and dependencies."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.package", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"zip to write (default {DEFAULT_OUT.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    try:
        result = build(args.out)
    except PackageError as error:
        print(f"package: {error}", file=sys.stderr)
        return 1
    shown = os.path.relpath(result.out) if result.out.is_relative_to(Path.cwd()) else result.out
    print(
        f"{shown}: {result.size / 1_000_000:.1f} MB ({result.size:,} bytes), "
        f"{result.files:,} files "
        f"({result.app_files} app, {result.dependency_files:,} in {SITE_PACKAGES}), "
        f"built in {result.seconds:.1f} s"
    )
    print(
        f"{len(result.dependencies)} distributions: "
        + ", ".join(f"{d.name} {d.version}" for d in result.dependencies)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
