"""The security rules of `resources/istio/security.yaml`, and how a value is judged.

A rule says by meaning which values weaken mutual TLS (`insecure_if`), so that
every spelling a reader of the value takes the same way is caught: the YAML of a
values file, Helm's `--set` typing, Go templates' truthiness, istiod reading its
mesh config. A missing key, or a null (Helm deletes a null key and the default
applies), is judged by what the rule says that default is (`absent`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kymamesh.resources import load_yaml, resources_dir

MESH_CONFIG_PREFIX = "meshConfig."
_OFF_WORDS = frozenset({"false", "f", "no", "n", "off", "0"})


@dataclass(frozen=True)
class SecurityRule:
    chart: str
    key: str
    why: str
    falsy: bool = False  # `insecure_if: falsy`
    truthy: bool = False  # `insecure_if: truthy`
    one_of: tuple[str, ...] = ()  # `insecure_if: {one_of: [...]}`, upper case
    enum: tuple[str, ...] = ()  # names in number order, for values given as numbers
    absent_secure: bool = True
    proto: str = ""  # the same path in proto field names (istiod reads both spellings)

    @property
    def spellings(self) -> tuple[str, ...]:
        """Every dotted path istiod reads as this key: each part in its JSON or its proto
        name (protojson takes either), `key` first."""
        if not self.proto:
            return (self.key,)
        paths = [""]
        for json_name, proto_name in zip(self.key.split("."), self.proto.split("."), strict=True):
            names = dict.fromkeys((json_name, proto_name))
            paths = [f"{p}.{n}" if p else n for p in paths for n in names]
        return tuple(paths)

    def judge(self, values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
        """(path, why) for each spelling present in `values` that breaks the rule; for a
        rule whose absence is insecure, one entry when no spelling is there. `prefix` is
        dropped from the paths first (`meshConfig.` for a live mesh config)."""
        problems = []
        present = False
        for path in self.spellings:
            value, absent = lookup_value(values, path.removeprefix(prefix))
            if absent:
                continue
            present = True
            problem = self.problem(value, absent=False)
            if problem:
                problems.append((path, problem))
        if not present:
            problem = self.problem(None, absent=True)
            if problem:
                problems.append((self.key, problem))
        return problems

    def problem(self, value: Any, absent: bool) -> str | None:
        """Why `value` breaks this rule, or None. `absent`: missing or null."""
        if absent:
            if self.absent_secure:
                return None
            return f"missing or null, so the default applies: {self.why}"
        if self.falsy and is_falsy(value):
            return f"{json.dumps(value)} reads as off: {self.why}"
        if self.truthy and not is_falsy(value):
            return f"{json.dumps(value)} reads as on: {self.why}"
        if self.one_of:
            name = self._enum_name(value)
            if name in self.one_of:
                shown = json.dumps(value) if name == str(value) else f"{json.dumps(value)} ({name})"
                return f"{shown}: {self.why}"
            if self.enum and name not in self.enum:
                return (
                    f"{json.dumps(value)} is not one of {', '.join(self.enum)} (or their "
                    f"numbers 0 to {len(self.enum) - 1}): istiod cannot read it"
                )
        return None

    def _enum_name(self, value: Any) -> str | None:
        if isinstance(value, bool):
            return None
        if isinstance(value, int) and 0 <= value < len(self.enum):
            return self.enum[value]
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit() and int(text) < len(self.enum):
                return self.enum[int(text)]
            return text.upper()
        return None


def is_falsy(value: Any) -> bool:
    """Whether a switch given this value reads as off to any of its readers."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str):
        text = value.strip().lower()
        return not text or text in _OFF_WORDS
    if isinstance(value, list | dict):
        return not value
    return value is None


def security_rules() -> tuple[SecurityRule, ...]:
    raw = load_yaml(resources_dir() / "security.yaml")
    rules = []
    for r in raw["rules"]:
        test = r["insecure_if"]
        absent = str(r.get("absent", "secure"))
        if absent not in ("secure", "insecure") or not (
            test in ("falsy", "truthy") or (isinstance(test, Mapping) and "one_of" in test)
        ):
            raise ValueError(f"security.yaml: rule {r['key']}: bad insecure_if or absent")
        rules.append(
            SecurityRule(
                chart=str(r["chart"]),
                key=str(r["key"]),
                why=str(r["why"]),
                falsy=test == "falsy",
                truthy=test == "truthy",
                one_of=tuple(str(v).upper() for v in test["one_of"])
                if isinstance(test, Mapping)
                else (),
                enum=tuple(str(v).upper() for v in r.get("enum") or ()),
                absent_secure=absent == "secure",
                proto=str(r.get("proto") or ""),
            )
        )
    return tuple(rules)


_MISSING = object()


def lookup_value(values: Mapping[str, Any], dotted: str) -> tuple[Any, bool]:
    """The value at `dotted`, and whether it is absent (missing, null, or under a null)."""
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None, True
        node = node.get(part, _MISSING)
        if node is _MISSING or node is None:
            return None, True
    return node, False


def mesh_config_problems(mesh: Mapping[str, Any], chart: str = "istiod") -> list[str]:
    """The live mesh config (ConfigMap istio, key `mesh`) judged by the `meshConfig.` rules."""
    problems = []
    for rule in security_rules():
        if rule.chart != chart or not rule.key.startswith(MESH_CONFIG_PREFIX):
            continue
        for path, problem in rule.judge(mesh, prefix=MESH_CONFIG_PREFIX):
            problems.append(f"mesh config {path.removeprefix(MESH_CONFIG_PREFIX)}: {problem}")
    return problems
