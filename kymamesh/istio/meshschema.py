"""The mesh config istiod can read: `meshConfig` values (and what the patch steps write
into it) checked against Istio's MeshConfig before anything is written.

The schema is data, `resources/istio/meshconfig.yaml`, made from istio/api's protos by
`scripts/gen_mesh_schema.py`. istiod reads its mesh config (ConfigMap `istio`, key
`mesh`) in istio's pkg/config/mesh ApplyMeshConfig (and MergeProxyConfig for
`defaultConfig`) with protomarshal.ApplyYAML: YAML to JSON, then the legacy
golang/protobuf jsonpb decoder, which takes each field by its JSON name or its proto
name. A value of another type than the field's fails the whole mesh config: the running
istiod keeps its last one ("invalid mesh config, using last known state") and a
restarted one cannot start. Unknown fields istiod ignores silently (ApplyYAML retries
with AllowUnknownFields): kymamesh refuses them by name, since a misspelt field is a
setting that never takes effect.

Types as that decoder reads them: a bool is a JSON boolean (not "false", not 0); a
string a JSON string; an integer a JSON integer or a string of one (not 1.0); a number
a JSON number, a string of one, "NaN", "Infinity" or "-Infinity"; a Duration a string
Go's time.ParseDuration reads ("5s", "250ms", "1m30s"; not the number 5); an enum a
member's name (exact case) or a number (kymamesh takes only the members' numbers); a
message a map; a list a list; a map a map; null leaves a field unset.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping
from typing import Any

from kymamesh.resources import load_yaml, resources_dir

ROOT = "MeshConfig"
PROVIDER = "MeshConfig.ExtensionProvider"
_DURATION = re.compile(r"[-+]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)")
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


@functools.cache
def _schema() -> Mapping[str, Any]:
    raw = load_yaml(resources_dir() / "meshconfig.yaml")
    messages = {}
    for name, body in raw["messages"].items():
        fields = dict(body.get("fields") or {})
        by_any = dict(fields)
        for json_name, field in fields.items():
            by_any.setdefault(field["proto"], {**field, "json": json_name})
            field.setdefault("json", json_name)
        messages[name] = {"fields": fields, "by_any": by_any}
    return {"messages": messages, "enums": raw["enums"]}


def _minor_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2])


class _Checker:
    def __init__(self, minor: str | None) -> None:
        self.minor = minor
        self.problems: list[str] = []

    def fail(self, path: str, problem: str) -> None:
        self.problems.append(f"{path}: {problem}")

    def check(self, value: Any, kind: str, path: str) -> None:
        if value is None:
            return  # null leaves the field unset
        schema = _schema()
        if kind in schema["messages"]:
            self.message(value, kind, path)
        elif kind in schema["enums"]:
            names = schema["enums"][kind]
            if isinstance(value, bool) or not (
                (isinstance(value, str) and value in names)
                or (isinstance(value, int) and 0 <= value < len(names))
            ):
                self.fail(
                    path,
                    f"{_shown(value)} is not one of {', '.join(names)} "
                    f"(or their numbers 0 to {len(names) - 1}); names are case-sensitive",
                )
        else:
            problem = _scalar_problem(value, kind)
            if problem:
                self.fail(path, problem)

    def message(self, value: Any, name: str, path: str) -> None:
        if not isinstance(value, Mapping):
            self.fail(path, f"must be a map ({_short(name)}), not {type_in_words(value)}")
            return
        body = _schema()["messages"][name]
        seen: dict[str, str] = {}
        oneofs: dict[str, list[str]] = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            field = body["by_any"].get(str(key))
            if field is None:
                close = difflib.get_close_matches(str(key), list(body["fields"]), n=1)
                self.fail(
                    where,
                    f"{_short(name)} has no field {key!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + "; istiod ignores unknown fields, so it would never take effect",
                )
                continue
            json_name = field["json"]
            if json_name in seen:
                self.fail(where, f"given twice, as {seen[json_name]!r} and {key!r}")
                continue
            seen[json_name] = str(key)
            since = field.get("since")
            if since and self.minor and _minor_tuple(self.minor) < _minor_tuple(since):
                self.fail(where, f"is new in Istio {since}; Istio {self.minor} does not have it")
                continue
            if field.get("oneof") and item is not None:
                oneofs.setdefault(field["oneof"], []).append(str(key))
            if "list" in field:
                if not isinstance(item, list):
                    if item is not None:
                        self.fail(where, f"must be a list, not {type_in_words(item)}")
                    continue
                for n, element in enumerate(item):
                    self.check(element, field["list"], f"{where}[{n}]")
            elif "map" in field:
                if not isinstance(item, Mapping):
                    if item is not None:
                        self.fail(where, f"must be a map, not {type_in_words(item)}")
                    continue
                for k, element in item.items():
                    self.check(element, field["map"], f"{where}.{k}")
            else:
                self.check(item, field["type"], where)
        for group, keys in oneofs.items():
            if len(keys) > 1:
                self.fail(path or _short(name), f"takes one of {', '.join(keys)} ({group})")


def _scalar_problem(value: Any, kind: str) -> str | None:
    if kind == "any":
        return None
    if kind == "object":
        return None if isinstance(value, Mapping) else f"must be a map, not {type_in_words(value)}"
    if kind == "bool":
        if isinstance(value, bool):
            return None
        return f"must be true or false (a YAML boolean), not {type_in_words(value)} {_shown(value)}"
    if kind == "string":
        if isinstance(value, str):
            return None
        return f"must be a string, not {type_in_words(value)} {_shown(value)} (quote it in YAML)"
    if kind in ("int", "uint"):
        whole = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and _INTEGER.fullmatch(value) is not None
        )
        if not whole:
            found = f"{type_in_words(value)} {_shown(value)}"
            return f"must be a whole number (3, not 3.0), not {found}"
        if kind == "uint" and float(value) < 0:
            return f"must not be negative ({_shown(value)})"
        return None
    if kind == "number":
        if isinstance(value, bool):
            return f"must be a number, not {_shown(value)}"
        if isinstance(value, int | float):
            return None  # YAML's .nan and .inf are refused when the file is read
        if isinstance(value, str) and (
            _NUMBER.fullmatch(value) or value in ("NaN", "Infinity", "-Infinity")
        ):
            return None
        return f"must be a number, not {type_in_words(value)} {_shown(value)}"
    if kind == "duration":
        if isinstance(value, str) and _DURATION.fullmatch(value):
            return None
        return (
            'must be a duration as a string ("5s", "250ms", "1m30s"), '
            f"not {type_in_words(value)} {_shown(value)}"
        )
    raise ValueError(f"meshconfig.yaml: unknown kind {kind!r}")


def type_in_words(value: Any) -> str:
    """A YAML value's type for an error message (`a string`, `a map`, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a map"
    return type(value).__name__


def _shown(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def mesh_config_problems(mesh: Any, minor: str | None = None, path: str = "") -> list[str]:
    """Why istiod (of Istio `minor`, e.g. "1.30") could not read `mesh` as its MeshConfig
    (or would ignore part of it), one line per problem, each naming the field's path."""
    checker = _Checker(minor)
    checker.check(mesh, ROOT, path)
    return checker.problems


def provider_problems(provider: Any, path: str, minor: str | None = None) -> list[str]:
    """The same for one entry of `extensionProviders`."""
    checker = _Checker(minor)
    checker.check(provider, PROVIDER, path)
    return checker.problems


def mesh_schema() -> Mapping[str, Any]:
    """The schema of `resources/istio/meshconfig.yaml`: `messages` (each with `fields` by
    JSON name and `by_any`, by JSON or proto name) and `enums` (names in number order)."""
    return _schema()
