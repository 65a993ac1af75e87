"""``grant``'s rule when Power BI says the principal is already there though Get Group Users
did not list it (added meanwhile): the role it has is read again, and a higher one is never
lowered. The emulator cannot stage that race on demand, so a workspace double stands in."""

from __future__ import annotations

from typing import Any, cast

import pytest

from shared.cli.grant import grant
from shared.destinations.powerbi import PowerBIClient
from shared.errors import ValidationError

PRINCIPAL = "3d9b93c6-7b6d-4801-a491-1738910904fd"


class RacingWorkspace:
    """Get Group Users misses the principal once; Add then finds it already there."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.listed = 0
        self.updates: list[str] = []

    def get_group_users(self, workspace_id: str) -> list[dict[str, Any]]:
        self.listed += 1
        if self.listed == 1:
            return []
        return [{"identifier": PRINCIPAL, "groupUserAccessRight": self.role}]

    def add_group_user(self, *args: Any) -> None:
        raise ValidationError(
            "already a member", status=400, code="AddingAlreadyExistsGroupUserNotSupportedError"
        )

    def update_group_user(self, workspace_id: str, principal: str, role: str, kind: str) -> None:
        self.updates.append(role)
        self.role = role


@pytest.mark.parametrize(
    ("has", "force", "action", "updates"),
    [
        ("Admin", False, "kept", []),
        ("Admin", True, "lowered", ["Contributor"]),
        ("Viewer", False, "raised", ["Contributor"]),
        ("Contributor", False, "unchanged", []),
    ],
)
def test_already_there_is_read_again_and_never_lowered_without_force(
    has: str, force: bool, action: str, updates: list[str]
) -> None:
    workspace = RacingWorkspace(has)
    done = grant(cast(PowerBIClient, workspace), "ws", PRINCIPAL, "Contributor", force=force)
    assert (done.action, done.previous, workspace.updates) == (action, has, updates)
