"""Write resources/istio/meshconfig.yaml, the mesh config schema kymamesh checks values
against, from istio/api's protos (mesh/v1alpha1/config.proto and proxy.proto) of the
Istio minors kymamesh installs.

Run: python scripts/gen_mesh_schema.py ISTIO_API_CHECKOUT TAG [TAG ...]
     (e.g. ~/src/istio-api 1.30.3 1.31.0-alpha.0; the tags are read with `git show`)

Only facts are taken: message and field names (proto and JSON), field types, enum
members and numbers. A field found in a later tag only carries `since: MINOR`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

TARGET = Path(__file__).resolve().parent.parent / "resources" / "istio" / "meshconfig.yaml"
FILES = ("mesh/v1alpha1/config.proto", "mesh/v1alpha1/proxy.proto")
SCALARS = {
    "bool": "bool",
    "string": "string",
    "bytes": "string",
    "int32": "int",
    "int64": "int",
    "uint32": "uint",
    "uint64": "uint",
    "sint32": "int",
    "fixed32": "uint",
    "double": "number",
    "float": "number",
    "google.protobuf.Duration": "duration",
    "google.protobuf.BoolValue": "bool",
    "google.protobuf.StringValue": "string",
    "google.protobuf.Int32Value": "int",
    "google.protobuf.Int64Value": "int",
    "google.protobuf.UInt32Value": "uint",
    "google.protobuf.UInt64Value": "uint",
    "google.protobuf.DoubleValue": "number",
    "google.protobuf.FloatValue": "number",
    "google.protobuf.Struct": "object",
    "google.protobuf.Value": "any",
    "google.protobuf.Any": "object",
}
_FIELD = re.compile(
    r"^\s*(repeated\s+)?(map<\s*(\w+)\s*,\s*([\w.]+)\s*>|[\w.]+)\s+(\w+)\s*=\s*(\d+)\s*[;\[]"
)
_OPEN = re.compile(r"^\s*(message|enum|oneof)\s+(\w+)\s*\{")
_ENUM_VALUE = re.compile(r"^\s*(\w+)\s*=\s*(-?\d+)\s*[;\[]")


def json_name(proto: str) -> str:
    """protoc's default JSON name: underscores dropped, the next letter upper-cased."""
    out, upper = [], False
    for ch in proto:
        if ch == "_":
            upper = True
        elif upper:
            out.append(ch.upper())
            upper = False
        else:
            out.append(ch)
    return "".join(out)


def parse(text: str) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Messages {full.name: {json: {...}}} and enums {full.name: [names in number order]}."""
    text = re.sub(r"//[^\n]*", "", text)
    messages: dict[str, Any] = {}
    enums: dict[str, list[str]] = {}
    stack: list[tuple[str, str]] = []  # (kind, name)
    oneof: str | None = None
    for line in text.splitlines():
        opens, closes = line.count("{"), line.count("}")
        opened = _OPEN.match(line)
        if opened:
            kind, name = opened.groups()
            opens -= 1
            if kind == "oneof":
                oneof = name
            else:
                scope = ".".join(n for k, n in stack if k not in ("oneof", "block"))
                full = f"{scope}.{name}" if scope else name
                if kind == "message":
                    messages[full] = {}
                else:
                    enums[full] = []
            stack.append((kind, name))
        else:
            scope = ".".join(n for k, n in stack if k not in ("oneof", "block"))
            kind = stack[-1][0] if stack else ""
            if kind == "enum":
                value = _ENUM_VALUE.match(line)
                if value:
                    enums[scope].append((int(value.group(2)), value.group(1)))  # type: ignore[arg-type]
            elif kind in ("message", "oneof"):
                field = _FIELD.match(line)
                if field and field.group(2) not in ("option", "reserved"):
                    repeated, typ, key, value_type, name, _ = field.groups()
                    entry: dict[str, Any] = {"proto": name}
                    if key:
                        entry["map"] = value_type
                    elif repeated:
                        entry["list"] = typ
                    else:
                        entry["type"] = typ
                    if kind == "oneof":
                        entry["oneof"] = oneof
                    messages[scope][json_name(name)] = entry
        stack.extend(("block", "") for _ in range(max(0, opens)))
        for _ in range(closes):
            if stack:
                if stack[-1][0] == "oneof":
                    oneof = None
                stack.pop()
    return messages, {k: [n for _, n in sorted(v)] for k, v in enums.items()}  # type: ignore[misc]


def resolve(name: str, scope: str, known: set[str]) -> str:
    """A type name as protoc resolves it: innermost scope first."""
    name = name.removeprefix("istio.mesh.v1alpha1.")
    parts = scope.split(".")
    for i in range(len(parts), -1, -1):
        candidate = ".".join([*parts[:i], name]) if i else name
        if candidate in known:
            return candidate
    return name


def build(api: Path, tags: list[str]) -> dict[str, Any]:
    messages: dict[str, Any] = {}
    enums: dict[str, list[str]] = {}
    first_minor = ".".join(tags[0].split(".")[:2])
    for tag in tags:
        minor = ".".join(tag.split(".")[:2])
        found_m: dict[str, Any] = {}
        found_e: dict[str, list[str]] = {}
        for path in FILES:
            text = subprocess.run(
                ["git", "-C", str(api), "show", f"{tag}:{path}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            m, e = parse(text)
            found_m.update(m)
            found_e.update(e)
        known = set(found_m) | set(found_e)
        for msg, fields in found_m.items():
            target = messages.setdefault(msg, {"fields": {}})
            for jname, entry in fields.items():
                if jname in target["fields"]:
                    continue
                out: dict[str, Any] = {"proto": entry["proto"]}
                for kind in ("type", "list", "map"):
                    if kind in entry:
                        typ = entry[kind]
                        out[kind] = SCALARS.get(typ) or (
                            "object"
                            if "." in typ
                            and not typ.startswith("istio.mesh")
                            and resolve(typ, msg, known) not in known
                            else resolve(typ, msg, known)
                        )
                if "oneof" in entry:
                    out["oneof"] = entry["oneof"]
                if minor != first_minor:
                    out["since"] = minor
                target["fields"][jname] = out
        for enum, names in found_e.items():
            enums.setdefault(enum, names)
    return {"messages": messages, "enums": enums}


def main() -> int:
    api, tags = Path(sys.argv[1]), sys.argv[2:]
    schema = build(api, tags)
    header = (
        "# Generated by scripts/gen_mesh_schema.py from istio/api "
        + ", ".join(tags)
        + " (mesh/v1alpha1/config.proto, proxy.proto).\n"
        "# The mesh config istiod reads: messages (fields by JSON name, each with its proto\n"
        "# name and type: a scalar kind, `object`/`any` where kymamesh does not look inside,\n"
        "# or a message or enum of this file), enums (names in number order).\n"
    )
    TARGET.write_text(header + yaml.safe_dump(schema, sort_keys=True, width=100))
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
