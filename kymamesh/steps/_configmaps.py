"""Editing one key of an Istio ConfigMap that holds a JSON or YAML document.

istiod reads its settings from documents stored as text in ConfigMap keys
(`istio-sidecar-injector`: `values` JSON, `config` YAML; `istio`: `mesh` YAML).
A step edits one key by a pure function of the key's text, so that `check`
can compare by meaning and a change can be recomputed from a fresh read when
it is applied. The write is a merge patch of that one key, conditional on the
resourceVersion it was computed from, and is never made when nothing differs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from kymamesh.adapters import yamlfast
from kymamesh.adapters.cluster import Cluster, Obj, Ref
from kymamesh.diffs import unified
from kymamesh.errors import ConflictError, NotFoundError, PreconditionError
from kymamesh.istio.controlplane import INJECTOR_CONFIGMAP, MESH_CONFIGMAP, ControlPlane
from kymamesh.steps.base import Change, StepContext

_ABSENT = object()

__all__ = ["INJECTOR_CONFIGMAP", "MESH_CONFIGMAP", "key_changes"]


@dataclass(frozen=True)
class KeyEdit:
    """The new text of a key and, in words, what changed."""

    text: str
    summaries: tuple[str, ...]


Editor = Callable[[str], "KeyEdit | None"]
"""Old text -> the edit, or None when the key is already as wanted."""

Parser = Callable[[str], Any]


class MissingConfigError(PreconditionError):
    """The ConfigMap or its key is not there: istiod is not installed, or not by its chart."""

    code = "missing-config"


def read_key(
    cluster: Cluster, ref: Ref, key: str, plane: ControlPlane | None = None
) -> tuple[Obj, str]:
    """The live ConfigMap and the text of one key; a clear error when either is missing."""
    live = cluster.get(ref)
    if live is None:
        which = plane.describe() if plane else "its revision"
        raise MissingConfigError(
            f"ConfigMap {ref.namespace}/{ref.name} does not exist, so its key `{key}` "
            "cannot be set",
            hint=f"istiod's chart creates it; check that istiod {which} is "
            f"installed in {ref.namespace}, e.g. with `kymamesh install`",
        )
    data = live.get("data") or {}
    if key not in data:
        raise MissingConfigError(
            f"ConfigMap {ref.namespace}/{ref.name} has no key `{key}` "
            f"(keys found: {', '.join(sorted(data)) or 'none'})",
            hint="istiod's chart writes this key; re-install or upgrade istiod",
        )
    return live, str(data[key] or "")


def parse_json_map(text: str, where: str) -> dict[str, Any]:
    """A JSON object, or a clear error naming where it came from."""
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        raise PreconditionError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PreconditionError(f"{where} is not a JSON object (found {type(value).__name__})")
    return value


def parse_yaml_map(text: str, where: str) -> dict[str, Any]:
    """A YAML mapping, or a clear error naming where it came from (parsed with libyaml when
    PyYAML has it: the injector's templates are large, and read by several steps)."""
    try:
        value = yamlfast.load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise PreconditionError(f"{where} is not valid YAML: {exc}") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PreconditionError(f"{where} is not a YAML mapping (found {type(value).__name__})")
    return value


def dump_json(value: Mapping[str, Any]) -> str:
    """Indented like Helm's toPrettyJson, so that a diff against the chart stays readable."""
    return json.dumps(value, indent=2, ensure_ascii=False)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (injection templates) as literal blocks, not escaped lines."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def dump_yaml(value: Mapping[str, Any]) -> str:
    return yaml.dump(
        dict(value),
        Dumper=_BlockDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,
    )


def key_changes(
    ctx: StepContext, name: str, key: str, editor: Editor, parse: Parser
) -> list[Change]:
    """The changes that `editor` makes to one key of ConfigMap `name` of every control
    plane revision (`name-REV`), none where in place, each with a diff by meaning."""
    return plane_key_changes(ctx, name, key, lambda _plane: editor, parse)


def plane_key_changes(
    ctx: StepContext,
    name: str,
    key: str,
    editor_for: Callable[[ControlPlane], Editor],
    parse: Parser,
) -> list[Change]:
    """`key_changes` with an editor per control plane revision (what is wanted may depend
    on the revision's Istio version)."""
    changes: list[Change] = []
    for plane in ctx.control_planes:
        changes += _key_change(ctx, plane, name, key, editor_for(plane), parse)
    return changes


def _key_change(
    ctx: StepContext, plane: ControlPlane, name: str, key: str, editor: Editor, parse: Parser
) -> list[Change]:
    """In a dry run of an `install` before phase 1 has made this revision's istiod, the
    ConfigMap does not exist yet: the change is shown against an empty key."""
    ref = plane.configmap(name)
    pending = ""
    try:
        _, text = read_key(ctx.cluster, ref, key, plane)
    except MissingConfigError:
        if not ctx.dry_run or plane.installed:
            raise
        text, pending = "", " (once phase 1 has installed istiod)"
    edit = editor(text)
    if edit is None or edit.text == text:
        return []
    label = f"{ref.namespace}/{ref.name} key {key}"
    before, after = changed_parts(parse(text), parse(edit.text))
    return [
        Change(
            target=f"ConfigMap/{label}",
            summary="; ".join(edit.summaries) + pending,
            apply=not_in_dry_run if pending else _applier(ref, key, editor),
            diff=unified(before, after, label),
        )
    ]


def not_in_dry_run(cluster: Cluster) -> None:
    """The action of a change that can only be shown (its object does not exist yet)."""
    raise AssertionError("a dry-run change is never applied")


def changed_parts(before: Any, after: Any) -> tuple[Any, Any]:
    """Only the branches of two documents that differ (maps key by key; the rest whole).

    Keeps a dry-run diff of a large document (the injector's values, its
    templates) to the few lines that change.
    """
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        old: dict[str, Any] = {}
        new: dict[str, Any] = {}
        for key in [*before, *(k for k in after if k not in before)]:
            if before.get(key, _ABSENT) == after.get(key, _ABSENT):
                continue
            if key in before and key in after:
                old[key], new[key] = changed_parts(before[key], after[key])
            elif key in before:
                old[key] = before[key]
            else:
                new[key] = after[key]
        return old, new
    return before, after


def _applier(ref: Ref, key: str, editor: Editor) -> Callable[[Cluster], None]:
    """Edit the key on the live text; the adapter redoes the edit on a fresh read when
    the ConfigMap changed between the read and the write."""

    def apply(cluster: Cluster) -> None:
        def edit(live: Obj) -> dict[str, Any] | None:
            data = live.get("data") or {}
            if key not in data:
                read_key(cluster, ref, key)  # raises the error naming what is missing
                raise ConflictError(f"{ref}: key `{key}` appeared meanwhile", 409)
            text = str(data[key] or "")
            change = editor(text)
            if change is None or change.text == text:
                return None
            return {"data": {key: change.text}}

        try:
            cluster.update(ref, edit)
        except NotFoundError:
            read_key(cluster, ref, key)  # raises the error naming what is missing
            raise

    return apply
