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
