"""ALLOWED_TARGETS (shared/engine/targets.py): the default rule and explicit patterns."""

from __future__ import annotations

import pytest

from shared.engine.targets import TargetPolicy
from shared.errors import ConfigError


def test_the_default_allows_defined_datasets_in_the_default_workspace_only() -> None:
    policy = TargetPolicy.parse(None)
    assert policy.allows(None, "ws-1", True, "Sales", "d-1", defined=True)
    assert not policy.allows(None, "ws-1", True, "Scratch", "d-2", defined=False)
    assert not policy.allows("Other", "ws-2", False, "Sales", "d-3", defined=True)
    assert policy.allows_workspace(None, None, True)
    assert not policy.allows_workspace("Other", "ws-2", False)


@pytest.mark.parametrize(
    ("text", "workspace", "workspace_id", "in_default", "dataset", "allowed"),
    [
        ("*/*", "Anything", "ws-9", False, "Any", True),
        ("Sales/*", "sales", "ws-2", False, "Any", True),  # names match without case
        ("Sales/*", "Ops", "ws-3", False, "Any", False),
        ("Sales", "Sales", "ws-2", False, "Any", True),  # a bare workspace is workspace/*
        ("ws-2/Orders", None, "ws-2", False, "Orders", True),  # the workspace by its id
        ("ws-2/Orders", None, "ws-2", False, "orders", False),  # dataset names are exact
        ("default/Orders", None, "ws-1", True, "Orders", True),
        ("default/Orders", "Ops", "ws-3", False, "Orders", False),
        ("*/d-7", "Ops", "ws-3", False, "Named", True),  # the dataset by its id
        (" Sales/A , Ops/B ", "Ops", "ws-3", False, "B", True),
    ],
)
def test_patterns(
    text: str,
    workspace: str | None,
    workspace_id: str,
    in_default: bool,
    dataset: str,
    allowed: bool,
) -> None:
    policy = TargetPolicy.parse(text)
    assert (
        policy.allows(workspace, workspace_id, in_default, dataset, "d-7", defined=False) is allowed
    )


@pytest.mark.parametrize("text", ["/Sales", "a/b/c"])
def test_a_malformed_entry_is_named(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TargetPolicy.parse(text)
    assert caught.value.setting == "ALLOWED_TARGETS"
    assert repr(text.strip()) in str(caught.value) or text in str(caught.value)
