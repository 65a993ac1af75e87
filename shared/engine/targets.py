"""Which workspaces and datasets callers may target (``ALLOWED_TARGETS``).

Senders name their target: a blob's path or metadata, an envelope's ``workspace`` and
``dataset``, ``?workspace=``, a path of the Power BI surface. Without a policy any caller
could write to any workspace and dataset the app's identity reaches. The policy, checked
whenever a target is resolved for a caller's rows (not for the operator's command line):

- ``ALLOWED_TARGETS`` unset: the default workspace (``POWERBI_WORKSPACE_ID``/``_NAME``; a
  target that names none is in it) and the datasets that have a definition (a file in
  ``DATASETS_DIR``, or one created through the Power BI surface);
- set: comma-separated ``workspace/dataset`` patterns, each part a name, an id or ``*``;
  ``default`` stands for the default workspace; a bare ``workspace`` means ``workspace/*``.
  ``*/*`` allows everything the identity reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import ConfigError


@dataclass(frozen=True)
class TargetPolicy:
    """The allowed targets; ``patterns`` None is the default rule (see the module)."""

    patterns: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def parse(cls, text: str | None) -> TargetPolicy:
        """``ALLOWED_TARGETS``; a :class:`ConfigError` names a malformed entry."""
        if text is None or not text.strip():
            return cls(None)
        patterns = []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            workspace, _, dataset = entry.partition("/")
            if not workspace.strip() or "/" in dataset:
                raise ConfigError(
                    "ALLOWED_TARGETS",
                    f"{entry!r} is not 'workspace/dataset' (each a name, id or *)",
                )
            patterns.append((workspace.strip(), dataset.strip() or "*"))
        return cls(tuple(patterns))

    def allows(
        self,
        workspace: str | None,
        workspace_id: str | None,
        in_default: bool,
        dataset: str,
        dataset_id: str,
        defined: bool,
    ) -> bool:
        """Whether a target may be written: ``workspace`` as the caller named it (None: the
        default one), its id, whether it is the default workspace, the dataset's name and
        id, and whether the dataset has a definition."""
        if self.patterns is None:
            return in_default and defined
        names = {n.casefold() for n in (workspace, workspace_id) if n}
        for pattern_workspace, pattern_dataset in self.patterns:
            folded = pattern_workspace.casefold()
            workspace_ok = folded == "*" or (folded == "default" and in_default) or folded in names
            dataset_ok = pattern_dataset in ("*", dataset, dataset_id)
            if workspace_ok and dataset_ok:
                return True
        return False

    def allows_workspace(
        self, workspace: str | None, workspace_id: str | None, in_default: bool
    ) -> bool:
        """Whether any target in this workspace may be written (the Power BI surface asks this
        before listing or creating)."""
        if self.patterns is None:
            return in_default
        names = {n.casefold() for n in (workspace, workspace_id) if n}
        return any(
            p.casefold() == "*"
            or (p.casefold() == "default" and in_default)
            or p.casefold() in names
            for p, _ in self.patterns
        )

    def describe(self) -> str:
        if self.patterns is None:
            return "the default workspace, datasets with a definition"
        return ", ".join(f"{w}/{d}" for w, d in self.patterns)
