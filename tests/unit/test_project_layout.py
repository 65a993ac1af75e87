"""Checks on the project skeleton: the entry point, the seed dataset and the deploy lists."""

import json
import re
from pathlib import Path

import azure.functions as func

ROOT = Path(__file__).resolve().parents[2]


def _lines(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a line-oriented config file."""
    stripped = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def test_function_app_exposes_one_function_app() -> None:
    import function_app

    assert isinstance(function_app.app, func.FunctionApp)


def test_sales_marketing_dataset_matches_the_seed_example() -> None:
    dataset = json.loads((ROOT / "datasets" / "SalesMarketing.json").read_text(encoding="utf-8"))

    assert dataset["name"] == "SalesMarketing"
    assert [table["name"] for table in dataset["tables"]] == ["Product"]
    columns = [(col["name"], col["dataType"]) for col in dataset["tables"][0]["columns"]]
    assert columns == [
        ("ProductID", "int"),
        ("Manufacturer", "string"),
        ("Category", "string"),
        ("Segment", "string"),
        ("Product", "string"),
        ("IsCompete", "bool"),
    ]


def test_funcignore_keeps_dev_only_paths_out_of_the_deployment() -> None:
    ignored = set(_lines(ROOT / ".funcignore"))

    for path in ("tests", "emulator", "devhost", "bench", ".venv", "local.settings.json"):
        assert path in ignored, f"{path} is missing from .funcignore"


def test_runtime_requirements_hold_no_dev_tools() -> None:
    names = {
        re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0].lower().replace("_", "-")
        for line in _lines(ROOT / "requirements.txt")
    }
    dev_only = {"aiohttp", "pytest", "pyjwt", "jwt", "jsonschema", "ruff", "mypy"}

    assert "azure-functions" in names
    assert not names & dev_only, f"dev-only packages in requirements.txt: {names & dev_only}"


# -- the layout of shared/ and its import rule (stated in shared/__init__.py) ------------------

SHARED = ROOT / "shared"
ROOMS = ("sources", "engine", "destinations", "stores", "cli")
GROUND = ("settings", "errors", "limits", "contracts")

#: room (or ground module) -> the rooms and top-level modules of ``shared`` it may import.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "limits": set(),
    "settings": {"errors"},
    "contracts": {"errors"},
    "stores": {*GROUND},
    "engine": {*GROUND, "stores", "engine"},
    "destinations": {*GROUND, "engine", "destinations"},
    "sources": {*GROUND, "engine", "stores", "sources"},
    "runtime": {*GROUND, "engine", "stores", "sources", "destinations"},
    "cli": {*GROUND, "engine", "stores", "sources", "destinations", "runtime", "cli"},
    "__main__": {"cli"},
}


def _owner(path: Path) -> str:
    """The room a module of shared/ lives in, or its own name at the top."""
    parts = path.relative_to(SHARED).with_suffix("").parts
    return parts[0]


def _shared_imports(path: Path) -> set[str]:
    """The rooms and top-level modules of ``shared`` that a module imports, at any depth of
    its code (inside functions and ``TYPE_CHECKING`` blocks too: a cycle there is a cycle)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "shared":
                names = [f"shared.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        found |= {name.split(".")[1] for name in names if name.startswith("shared.")}
    return found


def test_shared_is_grouped_into_its_rooms() -> None:
    top = {p.stem for p in SHARED.glob("*.py")} - {"__init__"}
    rooms = {p.name for p in SHARED.iterdir() if p.is_dir() and p.name != "__pycache__"}

    assert rooms == set(ROOMS)
    assert top == {*GROUND, "runtime", "__main__"}, "a new module belongs in one of the rooms"
    for room in ROOMS:
        assert (SHARED / room / "__init__.py").read_text(encoding="utf-8").startswith('"""')


def test_imports_in_shared_point_down_only() -> None:
    broken = []
    for path in sorted(SHARED.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == SHARED:
            continue
        owner = _owner(path)
        for imported in sorted(_shared_imports(path) - ALLOWED[owner] - {owner}):
            broken.append(f"{path.relative_to(ROOT)} ({owner}) imports shared.{imported}")
    assert not broken, "imports against the rule in shared/__init__.py:\n" + "\n".join(broken)


def test_the_import_rule_check_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: an engine module importing a destination is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("from shared.destinations.powerbi import PowerBIClient\nimport shared.sources\n")

    assert _shared_imports(bad) == {"destinations", "sources"}
    assert _shared_imports(bad) - ALLOWED["engine"] == {"destinations", "sources"}


def test_shared_never_imports_azure_functions() -> None:
    import ast

    for path in SHARED.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not [m for m in modules if m.startswith("azure.functions")], path
