"""Reading the YAML files a user gives (`-f`, `--config`, `--identity`): bounded and plain.

- Size: at most MAX_FILE_BYTES. What these files become ends up in Kubernetes objects
  (a Helm release record, a ConfigMap), which the API server holds to about 1 MiB.
- No anchors or aliases: an alias can make a small file expand into a huge value
  (a "billion laughs"), and nothing kymamesh reads needs them.
- Only the types JSON has, as Helm reads a values file: maps, lists, strings, numbers,
  booleans, null. A date-like scalar (`2026-01-01`) stays the string it is written as
  (Helm's YAML reader keeps it a string too); `!!binary`, `!!set`, `!!omap`, `!!pairs`,
  `!!timestamp`, `.nan` and `.inf` are refused with the place they were found.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from kymamesh.errors import UsageError, yaml_problem

MAX_FILE_BYTES = 1024 * 1024


class InputYamlError(yaml.YAMLError):
    def __init__(self, problem: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _PlainLoader(yaml.SafeLoader):
    """The safe loader without anchors, aliases, or types JSON does not have."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent):
            raise InputYamlError(
                f"YAML anchors and aliases are not accepted: alias *{event.anchor} "
                "(write the value out)",
                event.start_mark,
            )
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            raise InputYamlError(
                f"YAML anchors and aliases are not accepted: anchor &{anchor} "
                "(write the value out where it is used)",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _refuse_tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise InputYamlError(
        f"YAML type {node.tag.removeprefix('tag:yaml.org,2002:')!r} is not accepted "
        "(only maps, lists, strings, numbers, booleans and null)",
        node.start_mark,
    )


def _plain_float(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    value = yaml.SafeLoader.construct_yaml_float(loader, node)  # type: ignore[arg-type]
    if not math.isfinite(value):
        raise InputYamlError(
            f"{node.value!r} is not a finite number (JSON, and so Helm, has none)",
            node.start_mark,
        )
    return value


for _tag in ("binary", "set", "omap", "pairs", "timestamp"):
    _PlainLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)
_PlainLoader.add_constructor("tag:yaml.org,2002:float", _plain_float)
# A date-like plain scalar is a string, as in Helm: drop the implicit timestamp resolver.
_PlainLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def parse(text: str) -> Any:
    """Parse one YAML document the way user files are read (yaml.YAMLError when refused)."""
    return yaml.load(text, Loader=_PlainLoader)  # a SafeLoader subclass


def read(path: Path, where: str, holds: str) -> Any:
    """The YAML document of a user's file. `where` names it in errors (`values file X`);
    `holds` says what the file holds (`a YAML map ...`). Every refusal is a UsageError."""
    too_big = UsageError(
        f"{where} is larger than {MAX_FILE_BYTES} bytes ({MAX_FILE_BYTES // 1024} KiB)",
        hint="what it holds ends up in Kubernetes objects, which hold about 1 MiB; "
        f"the file holds {holds}",
    )
    try:
        if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
            raise too_big
        with path.open("rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reason = "it is a directory" if path.is_dir() else exc.strerror
        raise UsageError(
            f"cannot read {where}: {reason}", hint=f"pass the path of {holds}"
        ) from None
    if len(data) > MAX_FILE_BYTES:  # a pipe, or a file that grew
        raise too_big
    try:
        return parse(data.decode("utf-8"))
    except InputYamlError as exc:
        raise UsageError(f"{where}: {yaml_problem(exc)}", hint=f"the file holds {holds}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"{where} is not valid YAML: {yaml_problem(exc)}",
            hint=f"fix the YAML; the file holds {holds}",
        ) from None
