"""End-user identity: the identity file, checked, and the Dex configuration made of it.

Pure logic, no cluster: `read_identity_file` turns the file given with `--identity FILE`
into the parameters of patch step `identity` (what is remembered) and the secret values
read from files or the environment (never remembered); `parse` checks those parameters
and gives the typed model; `dex_config` and `dex_env` are what Dex's chart is given.

Secrets never sit in the parameters, in Dex's config or in any output. A secret field
(a connector's `clientSecret` or `bindPW`, a static client's `secret`) is one of:

- `{secretRef: {name: N, key: K}}`: key K of Secret N in Dex's namespace, read by Dex;
- `{file: PATH}` or `{env: VAR}`: read when kymamesh runs, and kept in the Secret
  `kymamesh-identity-secrets` that kymamesh manages; the parameters then name that Secret.

Dex gets each one as an environment variable from the Secret (`valueFrom.secretKeyRef`);
its config names the variable (`$VAR` in a connector's config, which Dex expands;
`secretEnv` of a static client).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kymamesh import userfiles
from kymamesh.errors import UsageError

MANAGED_SECRET = "kymamesh-identity-secrets"
ENV_PREFIX = "KYMAMESH_SECRET_"
_ID = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_HOST = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
SECRET_SOURCES = "{secretRef: {name: SECRET, key: KEY}}, {file: PATH} or {env: VARIABLE}"
FILE_EXAMPLE = (
    "connectors: [{type: oidc, id: corp, issuer: https://login.example.com, clientID: kyma, "
    "clientSecret: {env: CORP_CLIENT_SECRET}}]"
)
PARAMS = ("enabled", "connectors", "staticClients", "requireTokenHosts")


@dataclass(frozen=True)
class FieldSpec:
    """What a connector type takes. `https`: URLs that must be https; `absolute`: URLs that
    must be absolute; `secrets`: secret fields; `pem`: file fields holding a PEM certificate
    (given as a path in the file, kept as PEM text in the parameters)."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    https: tuple[str, ...] = ()
    absolute: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()
    pem: tuple[str, ...] = ()
    maps: tuple[str, ...] = ()  # fields that must be maps
    lists: tuple[str, ...] = ()  # fields that must be lists
    needs_redirect: bool = (
        False  # Dex needs redirectURI; the default is https://dex.DOMAIN/callback
    )


CONNECTOR_TYPES: Mapping[str, FieldSpec] = {
    "oidc": FieldSpec(
        required=("issuer", "clientID", "clientSecret"),
        optional=(
            "scopes",
            "claimMapping",
            "redirectURI",
            "getUserInfo",
            "insecureEnableGroups",
            "userIDKey",
            "userNameKey",
        ),
        https=("issuer",),
        absolute=("redirectURI",),
        secrets=("clientSecret",),
        maps=("claimMapping",),
        lists=("scopes",),
        needs_redirect=True,
    ),
    "saml": FieldSpec(
        required=("ssoURL", "ca", "redirectURI", "usernameAttr", "emailAttr"),
        optional=("entityIssuer", "ssoIssuer", "groupsAttr", "nameIDPolicyFormat"),
        https=("ssoURL",),
        absolute=("redirectURI",),
        pem=("ca",),
    ),
    "ldap": FieldSpec(
        required=("host", "userSearch"),
        optional=("bindDN", "bindPW", "startTLS", "rootCA", "usernamePrompt", "groupSearch"),
        secrets=("bindPW",),
        pem=("rootCA",),
        maps=("userSearch", "groupSearch"),
    ),
    "github": FieldSpec(
        required=("clientID", "clientSecret"),
        optional=("redirectURI", "orgs", "loadAllGroups", "teamNameField", "useLoginAsID"),
        absolute=("redirectURI",),
        secrets=("clientSecret",),
        lists=("orgs",),
        needs_redirect=True,
    ),
}
# The type of every connector field that is not a secret, as Dex's connector configs
# declare it (Dex's connector/oidc, saml, ldap and github Config structs): Dex reads its
# config strictly, so `clientID: 12345` (a number) would stop it.
_STR, _BOOL, _STRS, _STR_MAP = "a string", "true or false", "a list of strings", "a map of strings"
_FIELD_TYPES: Mapping[str, str] = {
    "issuer": _STR,
    "clientID": _STR,
    "redirectURI": _STR,
    "userIDKey": _STR,
    "userNameKey": _STR,
    "getUserInfo": _BOOL,
    "insecureEnableGroups": _BOOL,
    "scopes": _STRS,
    "claimMapping": _STR_MAP,
    "ssoURL": _STR,
    "ca": _STR,
    "usernameAttr": _STR,
    "emailAttr": _STR,
    "entityIssuer": _STR,
    "ssoIssuer": _STR,
    "groupsAttr": _STR,
    "nameIDPolicyFormat": _STR,
    "host": _STR,
    "bindDN": _STR,
    "startTLS": _BOOL,
    "rootCA": _STR,
    "usernamePrompt": _STR,
    "loadAllGroups": _BOOL,
    "teamNameField": _STR,
    "useLoginAsID": _BOOL,
}


def _check_type(label: str, value: Any, kind: str) -> None:
    ok = {
        _STR: lambda v: isinstance(v, str),
        _BOOL: lambda v: isinstance(v, bool),
        _STRS: lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
        _STR_MAP: lambda v: isinstance(v, Mapping) and all(isinstance(i, str) for i in v.values()),
    }[kind](value)
    if not ok:
        found = "null" if value is None else f"a YAML {type(value).__name__}"
        quote = ' (quote it: "..." in YAML)' if kind == _STR else ""
        raise refuse(label, f"must be {kind}, not {found} ({value!r}){quote}", f"write {kind}")


_CLAIMS = ("email", "groups", "preferred_username")
_LDAP_USER_SEARCH = (
    ("baseDN", "username", "idAttr", "emailAttr"),
    ("filter", "nameAttr", "preferredUsernameAttr", "scope"),
)
_LDAP_GROUP_SEARCH = (("baseDN", "nameAttr"), ("filter", "userMatchers", "scope"))
_CLIENT_FIELDS = ("id", "name", "redirectURIs", "secret", "public")


def refuse(where: str, problem: str, hint: str) -> UsageError:
    return UsageError(f"identity: {where}: {problem}", hint=hint)


# -- the model -------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRef:
    """A secret Dex reads from key `key` of Secret `name` in its namespace."""

    name: str
    key: str

    @property
    def managed(self) -> bool:
        return self.name == MANAGED_SECRET

    def to_params(self) -> dict[str, Any]:
        return {"secretRef": {"name": self.name, "key": self.key}}


@dataclass(frozen=True)
class Connector:
    type: str
    id: str
    name: str
    fields: Mapping[str, Any]  # every other field, secret fields as SecretRef


@dataclass(frozen=True)
class StaticClient:
    id: str
    name: str
    redirect_uris: tuple[str, ...]
    secret: SecretRef | None
    public: bool


@dataclass(frozen=True)
class Identity:
    enabled: bool
    connectors: tuple[Connector, ...] = ()
    clients: tuple[StaticClient, ...] = ()
    require_token_hosts: tuple[str, ...] = ()
    secret_refs: tuple[SecretRef, ...] = field(default=(), compare=False)

    def env_name(self, ref: SecretRef) -> str:
        """The environment variable of Dex's container that carries `ref`."""
        return env_names(self.secret_refs)[ref]


def env_names(refs: tuple[SecretRef, ...]) -> dict[SecretRef, str]:
    """One variable per distinct reference, named after it (made unique in order)."""
    names: dict[SecretRef, str] = {}
    used: set[str] = set()
    for ref in refs:
        if ref in names:
            continue
        base = ENV_PREFIX + re.sub(r"[^A-Z0-9]+", "_", f"{ref.name}_{ref.key}".upper()).strip("_")
        name, n = base, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names[ref] = name
    return names


# -- reading the file (the CLI) ---------------------------------------------------


def disabled_params() -> dict[str, Any]:
    """The parameters of `--identity none`: identity off; what it made is removed."""
    return {"enabled": False, "connectors": [], "staticClients": [], "requireTokenHosts": []}


def read_identity_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The step parameters of an identity file, and the secret values it had read from
    files or the environment (keys of Secret `kymamesh-identity-secrets`)."""
    where = f"--identity {path}"
    raw = userfiles.read(
        path,
        where,
        f"e.g. `{FILE_EXAMPLE}` (or give `--identity none` to turn identity off)",
    )
    if not isinstance(raw, dict):
        raise UsageError(
            f"{where} must be a map (found a YAML {type(raw).__name__})",
            hint=f"write e.g. `{FILE_EXAMPLE}`",
        )
    unknown = sorted(set(map(str, raw)) - {"connectors", "staticClients", "requireTokenHosts"})
    if unknown:
        raise UsageError(
            f"{where}: unknown keys {', '.join(unknown)}",
            hint="the identity file takes connectors, staticClients and requireTokenHosts",
        )
    base = path.resolve().parent
    values: dict[str, str] = {}
    connectors = _list(raw.get("connectors"), "connectors")
    params_connectors = []
    for index, item in enumerate(connectors):
        if not isinstance(item, dict):
            raise refuse(f"connectors[{index}]", "must be a map", f"write e.g. `{FILE_EXAMPLE}`")
        params_connectors.append(_read_connector(item, index, base, values))
    params_clients = []
    for index, item in enumerate(_list(raw.get("staticClients"), "staticClients")):
        if not isinstance(item, dict):
            raise refuse(
                f"staticClients[{index}]",
                "must be a map",
                "write e.g. `{id: app, name: App, redirectURIs: [https://app.example.com/cb], "
                "secret: {env: APP_SECRET}}`",
            )
        client = dict(item)
        label = f"staticClients[{index}] ({client.get('id', '?')})"
        if "secret" in client:
            client["secret"] = _read_secret(
                client["secret"], label, "secret", f"client.{client.get('id')}.secret", base, values
            )
        params_clients.append(client)
    params = {
        "enabled": True,
        "connectors": params_connectors,
        "staticClients": params_clients,
        "requireTokenHosts": _list(raw.get("requireTokenHosts"), "requireTokenHosts"),
    }
    parse(params)  # every check that needs no domain and no cluster: before any write
    return params, values


def _refuse_duplicate_ids(name: str, ids: list[str], what: str, each: str) -> None:
    seen: set[str] = set()
    for index, id_ in enumerate(ids):
        if id_ in seen:
            raise refuse(
                f"{name}[{index}].id",
                f"duplicate {what} id {id_!r}",
                f"give every {each} its own id",
            )
        seen.add(id_)


def _list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise refuse(
            name, f"must be a list (found a YAML {type(value).__name__})", "write a YAML list"
        )
    return list(value)


def _read_connector(
    item: Mapping[str, Any], index: int, base: Path, values: dict[str, str]
) -> dict[str, Any]:
    result = dict(item)
    ctype = str(item.get("type", ""))
    cid = item.get("id")
    label = f"connectors[{index}] ({cid or ctype or '?'})"
    spec = CONNECTOR_TYPES.get(ctype)
    if spec is None:
        return result  # parse() names the unknown type
    for name in spec.secrets:
        if name in result:
            result[name] = _read_secret(
                result[name], label, name, f"connector.{cid}.{name}", base, values
            )
    for name in spec.pem:
        if name in result:
            result[name] = _read_pem(result[name], label, name, base)
    return result


def _read_secret(
    value: Any, label: str, name: str, key: str, base: Path, values: dict[str, str]
) -> Any:
    """A secret source of the file: a secretRef stays; file and env are read now."""
    if not isinstance(value, dict) or len(value) != 1:
        return value  # parse() refuses it, naming the field
    ((source, arg),) = value.items()
    if source == "file":
        target = (base / str(arg)).expanduser()
        try:
            text = target.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise refuse(
                f"{label}.{name}",
                f"cannot read file {target}: {reason}",
                "give a readable file holding the secret (paths are relative to the identity file)",
            ) from None
    elif source == "env":
        if not isinstance(arg, str) or not _ENV_NAME.match(arg):
            raise refuse(
                f"{label}.{name}",
                f"`env: {arg}` is not an environment variable name",
                f"use {SECRET_SOURCES}",
            )
        found = os.environ.get(arg)
        if found is None:
            raise refuse(
                f"{label}.{name}",
                f"environment variable {arg} is not set",
                f"export {arg} before running kymamesh, or use another source: {SECRET_SOURCES}",
            )
        text = found
    else:
        return value
    if not text:
        raise refuse(
            f"{label}.{name}", f"the {source} source gives an empty secret", "give the secret"
        )
    if not _SECRET_KEY.match(key):
        return value  # a bad id; parse() names it
    values[key] = text
    return SecretRef(MANAGED_SECRET, key).to_params()


def _read_pem(value: Any, label: str, name: str, base: Path) -> Any:
    """A certificate given as the path of a PEM file: kept as its text (it is public)."""
    if not isinstance(value, str) or value.lstrip().startswith("-----BEGIN"):
        return value
    target = (base / value).expanduser()
    try:
        return target.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise refuse(
            f"{label}.{name}",
            f"cannot read the certificate file {target}: {reason}",
            "give the path of a PEM certificate file (relative to the identity file)",
        ) from None


# -- checking the parameters --------------------------------------------------------


def parse(params: Mapping[str, Any], domain: str | None = None) -> Identity:
    """The identity of step `identity`'s parameters, checked; with `domain`, the hosts
    that require a token must be under it. Every refusal names the field."""
    enabled = params.get("enabled", False)
    if not isinstance(enabled, bool):
        raise refuse("enabled", "must be true or false", "use --identity FILE or --identity none")
    if not enabled:
        return Identity(enabled=False)
    refs: list[SecretRef] = []
    connectors = [
        _connector(item, index, refs)
        for index, item in enumerate(_list(params.get("connectors"), "connectors"))
    ]
    _refuse_duplicate_ids("connectors", [c.id for c in connectors], "connector", "connector")
    clients = [
        _client(item, index, refs)
        for index, item in enumerate(_list(params.get("staticClients"), "staticClients"))
    ]
    _refuse_duplicate_ids("staticClients", [c.id for c in clients], "client", "static client")
    hosts = []
    for index, host in enumerate(_list(params.get("requireTokenHosts"), "requireTokenHosts")):
        hosts.append(_host(host, index, domain))
    if len(set(hosts)) != len(hosts):
        raise refuse("requireTokenHosts", "lists a host twice", "list each host once")
    return Identity(True, tuple(connectors), tuple(clients), tuple(hosts), tuple(refs))


def _connector(item: Any, index: int, refs: list[SecretRef]) -> Connector:
    where = f"connectors[{index}]"
    if not isinstance(item, Mapping):
        raise refuse(where, "must be a map", f"write e.g. `{FILE_EXAMPLE}`")
    ctype = item.get("type")
    types = ", ".join(CONNECTOR_TYPES)
    if ctype is None:
        raise refuse(f"{where}.type", "is missing", f"set type to one of: {types}")
    spec = CONNECTOR_TYPES.get(str(ctype))
    if spec is None:
        raise refuse(f"{where}.type", f"unknown connector type {ctype!r}", f"use one of: {types}")
    cid = item.get("id")
    if cid is None:
        raise refuse(f"{where}.id", "is missing", "give the connector an id, e.g. id: corp")
    if not isinstance(cid, str) or not _ID.match(cid):
        raise refuse(
            f"{where}.id",
            f"{cid!r} is not a valid id",
            "use lower-case letters, digits, '-', '_' and '.', at most 63 characters",
        )
    where = f"connectors[{index}] ({cid})"
    name = item.get("name", cid)
    if not isinstance(name, str) or not name.strip():
        raise refuse(f"{where}.name", "must be a non-empty string", "give a display name")
    known = {"type", "id", "name", *spec.required, *spec.optional}
    unknown = sorted(set(map(str, item)) - known)
    if unknown:
        raise refuse(
            where,
            f"type {ctype} does not take: {', '.join(unknown)}",
            f"{ctype} takes: {', '.join(sorted(known))}",
        )
    for req in spec.required:
        if item.get(req) in (None, "", [], {}):
            raise refuse(f"{where}.{req}", f"is missing (required for type {ctype})", f"set {req}")
    fields: dict[str, Any] = {}
    for key, value in item.items():
        if key in ("type", "id", "name"):
            continue
        fields[key] = _field(str(ctype), spec, where, str(key), value, refs)
    if ctype == "ldap":
        if ("bindDN" in fields) != ("bindPW" in fields):
            raise refuse(
                f"{where}.bindPW" if "bindDN" in fields else f"{where}.bindDN",
                "bindDN and bindPW go together",
                "give both for a search account, or neither for an anonymous search",
            )
        _ldap_search(fields, "userSearch", where, _LDAP_USER_SEARCH)
        if "groupSearch" in fields:
            _ldap_search(fields, "groupSearch", where, _LDAP_GROUP_SEARCH)
        host = fields["host"]
        if not isinstance(host, str) or "://" in host or not host.strip():
            raise refuse(
                f"{where}.host", f"{host!r} is not host:port", "write e.g. ldap.example.com:636"
            )
    return Connector(str(ctype), cid, name, fields)


def _field(
    ctype: str, spec: FieldSpec, where: str, key: str, value: Any, refs: list[SecretRef]
) -> Any:
    label = f"{where}.{key}"
    if key in spec.secrets:
        ref = secret_ref(value, label)
        refs.append(ref)
        return ref
    if key in _FIELD_TYPES:
        _check_type(label, value, _FIELD_TYPES[key])
    if key == "orgs":
        _github_orgs(value, label)
    if key in spec.https:
        _url(value, label, https=True)
    if key in spec.absolute:
        _url(value, label, https=False)
    if key in spec.pem:
        check_pem_certificate(value, label)
    if key in spec.maps and not isinstance(value, Mapping):
        raise refuse(
            label, "must be a map", f"see the {ctype} connector in docs/reference/identity-file.md"
        )
    if key in spec.lists and not isinstance(value, list):
        raise refuse(
            label, "must be a list", f"see the {ctype} connector in docs/reference/identity-file.md"
        )
    if key == "claimMapping":
        unknown = sorted(set(map(str, value)) - set(_CLAIMS))
        if unknown:
            raise refuse(
                label, f"unknown claims {', '.join(unknown)}", f"map any of: {', '.join(_CLAIMS)}"
            )
    if key == "scopes" and not all(isinstance(s, str) and s for s in value):
        raise refuse(label, "must be a list of scope names", "write e.g. [openid, email, groups]")
    return value


def _github_orgs(value: Any, label: str) -> None:
    """github's orgs: a list of {name, teams: [...]}."""
    if not isinstance(value, list):
        return  # the list check names it
    for n, org in enumerate(value):
        where = f"{label}[{n}]"
        if not isinstance(org, Mapping) or set(map(str, org)) - {"name", "teams"}:
            raise refuse(
                where, "must be {name: ORG, teams: [TEAM, ...]}", "write e.g. {name: acme}"
            )
        _check_type(f"{where}.name", org.get("name"), _STR)
        if "teams" in org:
            _check_type(f"{where}.teams", org["teams"], _STRS)


def _ldap_search(
    fields: Mapping[str, Any], key: str, where: str, names: tuple[tuple[str, ...], tuple[str, ...]]
) -> None:
    search = fields[key]
    required, optional = names
    for attr, value in search.items():
        if attr == "userMatchers":
            ok = isinstance(value, list) and all(
                isinstance(m, Mapping)
                and set(map(str, m)) == {"userAttr", "groupAttr"}
                and all(isinstance(v, str) for v in m.values())
                for m in value
            )
            if not ok:
                raise refuse(
                    f"{where}.{key}.userMatchers",
                    "must be a list of {userAttr: ATTR, groupAttr: ATTR}",
                    "write e.g. [{userAttr: DN, groupAttr: member}]",
                )
        elif value is not None:
            _check_type(f"{where}.{key}.{attr}", value, _STR)
    for req in required:
        if not search.get(req):
            raise refuse(
                f"{where}.{key}.{req}", "is missing (required for type ldap)", f"set {key}.{req}"
            )
    unknown = sorted(set(map(str, search)) - set(required) - set(optional))
    if unknown:
        raise refuse(
            f"{where}.{key}",
            f"does not take: {', '.join(unknown)}",
            f"{key} takes: {', '.join(required + optional)}",
        )


def secret_ref(value: Any, label: str) -> SecretRef:
    """A secret field of the parameters: only a reference to a Secret."""
    hint = (
        f"give the secret as {SECRET_SOURCES}; never write it into the file "
        "(file and env sources are read by `--identity FILE`)"
    )
    if isinstance(value, str):
        raise refuse(label, "is written as plain text", hint)
    if not isinstance(value, Mapping) or set(value) != {"secretRef"}:
        if isinstance(value, Mapping) and set(value) & {"file", "env"}:
            raise refuse(
                label,
                "a file or env source is read only from an identity file",
                "give the file with --identity FILE (it reads the secret and keeps it in Secret "
                f"{MANAGED_SECRET}), or use a secretRef",
            )
        raise refuse(label, "is not a secret source", hint)
    ref = value["secretRef"]
    if not isinstance(ref, Mapping) or set(ref) != {"name", "key"}:
        raise refuse(
            label,
            "secretRef takes exactly name and key",
            "write {secretRef: {name: SECRET, key: KEY}}",
        )
    name, key = str(ref["name"]), str(ref["key"])
    if not _SECRET_NAME.match(name):
        raise refuse(
            f"{label}.secretRef.name",
            f"{name!r} is not a Secret name",
            "give the name of a Secret in Dex's namespace",
        )
    if not _SECRET_KEY.match(key):
        raise refuse(
            f"{label}.secretRef.key", f"{key!r} is not a Secret key", "give a key of that Secret"
        )
    return SecretRef(name, key)


def _url(value: Any, label: str, https: bool) -> None:
    if not isinstance(value, str):
        raise refuse(label, "must be a URL", "write e.g. https://login.example.com")
    parts = urlsplit(value)
    if https and parts.scheme != "https":
        raise refuse(
            label,
            f"{value!r} is not an https URL",
            "identity providers are reached over https only: write https://...",
        )
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise refuse(
            label,
            f"{value!r} is not an absolute URL",
            "write the whole URL with scheme and host, e.g. https://app.example.com/callback",
        )


def check_pem_certificate(value: Any, label: str) -> None:
    """The value must be PEM text of one or more X.509 certificates."""
    from cryptography import x509

    hint = "give the path of a PEM file holding the CA certificate (-----BEGIN CERTIFICATE-----)"
    if not isinstance(value, str) or "-----BEGIN CERTIFICATE-----" not in value:
        raise refuse(label, "is not a PEM certificate", hint)
    try:
        x509.load_pem_x509_certificates(value.encode())
    except ValueError as exc:
        raise refuse(label, f"is not a PEM certificate ({exc})", hint) from None


def _client(item: Any, index: int, refs: list[SecretRef]) -> StaticClient:
    where = f"staticClients[{index}]"
    example = (
        "write e.g. `{id: app, name: App, redirectURIs: [https://app.example.com/cb], "
        "secret: {env: APP_SECRET}}`"
    )
    if not isinstance(item, Mapping):
        raise refuse(where, "must be a map", example)
    cid = item.get("id")
    if not isinstance(cid, str) or not _ID.match(cid):
        problem = "is missing" if cid is None else f"{cid!r} is not a valid id"
        raise refuse(f"{where}.id", problem, "use lower-case letters, digits, '-', '_' and '.'")
    where = f"staticClients[{index}] ({cid})"
    unknown = sorted(set(map(str, item)) - set(_CLIENT_FIELDS))
    if unknown:
        raise refuse(
            where,
            f"does not take: {', '.join(unknown)}",
            f"a static client takes: {', '.join(_CLIENT_FIELDS)}",
        )
    name = item.get("name", cid)
    if not isinstance(name, str) or not name.strip():
        raise refuse(f"{where}.name", "must be a non-empty string", "give a display name")
    uris = item.get("redirectURIs")
    if not isinstance(uris, list) or not uris:
        raise refuse(
            f"{where}.redirectURIs", "is missing or empty", "list the application's callback URLs"
        )
    for n, uri in enumerate(uris):
        _url(uri, f"{where}.redirectURIs[{n}]", https=False)
    public = item.get("public", False)
    if not isinstance(public, bool):
        raise refuse(
            f"{where}.public", "must be true or false", "leave it out for a confidential client"
        )
    secret = None
    if "secret" in item:
        secret = secret_ref(item["secret"], f"{where}.secret")
        refs.append(secret)
    elif not public:
        raise refuse(
            f"{where}.secret",
            "is missing (required unless public: true)",
            f"give it as {SECRET_SOURCES}",
        )
    return StaticClient(cid, name, tuple(str(u) for u in uris), secret, public)


def _host(host: Any, index: int, domain: str | None) -> str:
    label = f"requireTokenHosts[{index}]"
    if not isinstance(host, str) or not _HOST.match(host.lower().rstrip(".")):
        raise refuse(
            label,
            f"{host!r} is not a host name",
            "list host names, e.g. app.example.com (no wildcards, no ports)",
        )
    canonical = host.lower().rstrip(".")
    if domain is None:
        return canonical
    if not canonical.endswith(f".{domain}"):
        raise refuse(
            label,
            f"{host} is not under the domain {domain} that the gateway serves",
            f"list hosts under {domain} (e.g. app.{domain}), or change --domain",
        )
    if canonical == f"dex.{domain}":
        raise refuse(
            label,
            f"{host} is Dex itself, which must be reachable without a token to issue one",
            "leave it out",
        )
    return canonical


# -- what Dex is given ----------------------------------------------------------------


def issuer(domain: str) -> str:
    return f"https://dex.{domain}"


def dex_config(identity: Identity, domain: str) -> dict[str, Any]:
    """Dex's configuration: issuer, Kubernetes storage, connectors, static clients.
    Secret fields are environment variables (see `dex_env`); no secret is in it."""
    env = env_names(identity.secret_refs)
    connectors = []
    for c in identity.connectors:
        spec = CONNECTOR_TYPES[c.type]
        config: dict[str, Any] = {}
        for key, value in c.fields.items():
            if isinstance(value, SecretRef):
                config[key] = f"${env[value]}"
            elif key in spec.pem:
                config[f"{key}Data"] = base64.b64encode(str(value).encode()).decode("ascii")
            else:
                config[key] = value
        if spec.needs_redirect and "redirectURI" not in config:
            config["redirectURI"] = f"{issuer(domain)}/callback"
        connectors.append({"type": c.type, "id": c.id, "name": c.name, "config": config})
    clients = []
    for s in identity.clients:
        client: dict[str, Any] = {"id": s.id, "name": s.name, "redirectURIs": list(s.redirect_uris)}
        if s.public:
            client["public"] = True
        if s.secret is not None:
            client["secretEnv"] = env[s.secret]
        clients.append(client)
    return {
        "issuer": issuer(domain),
        "storage": {"type": "kubernetes", "config": {"inCluster": True}},
        "web": {"http": "0.0.0.0:5556"},
        "oauth2": {"skipApprovalScreen": True},
        "enablePasswordDB": False,
        "connectors": connectors,
        "staticClients": clients,
    }


def dex_env(identity: Identity) -> list[dict[str, Any]]:
    """The environment of Dex's container: one variable per Secret reference."""
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        for ref, name in env_names(identity.secret_refs).items()
    ]


def managed_keys(identity: Identity) -> list[str]:
    """The keys of Secret kymamesh-identity-secrets the identity refers to."""
    return sorted({r.key for r in identity.secret_refs if r.managed})
