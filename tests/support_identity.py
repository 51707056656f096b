"""Identity files for the tests: a good one with every connector type and every secret
source, and the bad inputs that must be refused (each naming its field)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from support_certs import make_pair

DOMAIN = "local.kyma.dev"  # the default domain of step ingress-gateway-tls
OIDC_SECRET = "oidc-s3cret-5d1f-never-in-output"
APP_SECRET = "app-s3cret-77ab-never-in-output"
BIND_PW = "bind-pw-19c4-never-in-output"
GITHUB_SECRET = "gh-s3cret-0e2c-never-in-output"
SECRETS = (OIDC_SECRET, APP_SECRET, BIND_PW, GITHUB_SECRET)
APP_SECRET_ENV = "KM_TEST_APP_SECRET"
LDAP_SECRET = "ldap-bind"  # a Secret in kyma-system the user made (secretRef)


def identity_doc(folder: Path) -> dict[str, Any]:
    """Three connectors (oidc: secret from a file; saml: CA from a file; ldap: bind password
    from a secretRef), one static client (secret from the environment), one host that
    requires a token. Writes the files it names into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "saml-ca.pem").write_bytes(make_pair(["adfs.example.com"])[0])
    (folder / "oidc-secret").write_text(OIDC_SECRET + "\n")
    return {
        "connectors": [
            {
                "type": "oidc",
                "id": "corp",
                "name": "Corporate SSO",
                "issuer": "https://login.example.com",
                "clientID": "kyma",
                "clientSecret": {"file": "oidc-secret"},
                "scopes": ["openid", "email", "groups"],
                "claimMapping": {"groups": "roles"},
            },
            {
                "type": "saml",
                "id": "adfs",
                "name": "ADFS",
                "ssoURL": "https://adfs.example.com/adfs/ls",
                "ca": "saml-ca.pem",
                "entityIssuer": f"https://dex.{DOMAIN}/callback",
                "redirectURI": f"https://dex.{DOMAIN}/callback",
                "usernameAttr": "name",
                "emailAttr": "email",
                "groupsAttr": "groups",
            },
            {
                "type": "ldap",
                "id": "ldap",
                "host": "ldap.example.com:636",
                "bindDN": "cn=svc,dc=example,dc=com",
                "bindPW": {"secretRef": {"name": LDAP_SECRET, "key": "password"}},
                "userSearch": {
                    "baseDN": "ou=people,dc=example,dc=com",
                    "username": "uid",
                    "idAttr": "uid",
                    "emailAttr": "mail",
                },
            },
        ],
        "staticClients": [
            {
                "id": "app",
                "name": "App",
                "redirectURIs": [f"https://app.{DOMAIN}/callback"],
                "secret": {"env": APP_SECRET_ENV},
            }
        ],
        "requireTokenHosts": [f"app.{DOMAIN}"],
    }


def write_identity(folder: Path, doc: dict[str, Any], name: str = "identity.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def apply(doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        fn(doc)
        return doc

    return apply


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def fn(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return _edit(fn)


def _drop(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def fn(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return _edit(fn)


def _append(path: str, item: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return _edit(lambda doc: doc[path].append(copy.deepcopy(item)))


def _not_pem(folder: Path) -> None:
    (folder / "not-a-cert.pem").write_text("this is not a certificate\n")


# name -> (edit of the good document, the field the refusal names, words of the message)
BAD_INPUTS: dict[str, tuple[Callable[[dict[str, Any]], dict[str, Any]], str, str]] = {
    "unknown connector type": (
        _set(("connectors", 0, "type"), "kerberos"),
        "connectors[0].type",
        "unknown connector type 'kerberos'",
    ),
    "oidc without clientID": (
        _drop(("connectors", 0, "clientID")),
        "connectors[0] (corp).clientID",
        "is missing (required for type oidc)",
    ),
    "saml without ssoURL": (
        _drop(("connectors", 1, "ssoURL")),
        "connectors[1] (adfs).ssoURL",
        "is missing (required for type saml)",
    ),
    "ldap without userSearch.idAttr": (
        _drop(("connectors", 2, "userSearch", "idAttr")),
        "connectors[2] (ldap).userSearch.idAttr",
        "is missing",
    ),
    "http oidc issuer": (
        _set(("connectors", 0, "issuer"), "http://login.example.com"),
        "connectors[0] (corp).issuer",
        "is not an https URL",
    ),
    "http saml ssoURL": (
        _set(("connectors", 1, "ssoURL"), "http://adfs.example.com/adfs/ls"),
        "connectors[1] (adfs).ssoURL",
        "is not an https URL",
    ),
    "saml CA not a PEM certificate": (
        _set(("connectors", 1, "ca"), "not-a-cert.pem"),
        "connectors[1] (adfs).ca",
        "is not a PEM certificate",
    ),
    "duplicate connector id": (
        _set(("connectors", 1, "id"), "corp"),
        "connectors[1].id",
        "duplicate connector id 'corp'",
    ),
    "duplicate client id": (
        _append(
            "staticClients",
            {"id": "app", "redirectURIs": ["https://b.example.com/cb"], "public": True},
        ),
        "staticClients[1].id",
        "duplicate client id 'app'",
    ),
    "relative redirect URI": (
        _set(("staticClients", 0, "redirectURIs"), ["/callback"]),
        "staticClients[0] (app).redirectURIs[0]",
        "is not an absolute URL",
    ),
    "host not under the domain": (
        _set(("requireTokenHosts",), ["app.example.org"]),
        "requireTokenHosts[0]",
        f"is not under the domain {DOMAIN}",
    ),
    "github without clientSecret": (
        _append("connectors", {"type": "github", "id": "gh", "clientID": "kyma"}),
        "connectors[3] (gh).clientSecret",
        "is missing (required for type github)",
    ),
    "github secret in plain text": (
        _append(
            "connectors",
            {"type": "github", "id": "gh", "clientID": "kyma", "clientSecret": GITHUB_SECRET},
        ),
        "connectors[3] (gh).clientSecret",
        "is written as plain text",
    ),
    "relative connector redirectURI": (
        _set(("connectors", 1, "redirectURI"), "/callback"),
        "connectors[1] (adfs).redirectURI",
        "is not an absolute URL",
    ),
    "ldap bindDN without bindPW": (
        _drop(("connectors", 2, "bindPW")),
        "connectors[2] (ldap).bindPW",
        "bindDN and bindPW go together",
    ),
    "client secret in plain text": (
        _set(("staticClients", 0, "secret"), "plain-text-secret"),
        "staticClients[0] (app).secret",
        "is written as plain text",
    ),
    # Dex reads its config strictly: every field has its type
    "oidc clientID a number": (
        _set(("connectors", 0, "clientID"), 12345),
        "connectors[0] (corp).clientID",
        "must be a string, not a YAML int",
    ),
    "oidc getUserInfo a string": (
        _set(("connectors", 0, "getUserInfo"), "yes"),
        "connectors[0] (corp).getUserInfo",
        "must be true or false",
    ),
    "oidc scopes with a number": (
        _set(("connectors", 0, "scopes"), ["openid", 7]),
        "connectors[0] (corp).scopes",
        "must be a list of strings",
    ),
    "saml usernameAttr a list": (
        _set(("connectors", 1, "usernameAttr"), ["name"]),
        "connectors[1] (adfs).usernameAttr",
        "must be a string",
    ),
    "ldap startTLS a number": (
        _set(("connectors", 2, "startTLS"), 1),
        "connectors[2] (ldap).startTLS",
        "must be true or false",
    ),
    "ldap userSearch.baseDN a map": (
        _set(("connectors", 2, "userSearch", "baseDN"), {"dc": "example"}),
        "connectors[2] (ldap).userSearch.baseDN",
        "must be a string",
    ),
    "github orgs of numbers": (
        _append(
            "connectors",
            {
                "type": "github",
                "id": "gh",
                "clientID": "kyma",
                "clientSecret": {"secretRef": {"name": "gh", "key": "secret"}},
                "orgs": [{"name": 42}],
            },
        ),
        "connectors[3] (gh).orgs[0].name",
        "must be a string",
    ),
}


def bad_document(name: str, folder: Path) -> tuple[dict[str, Any], str, str]:
    edit, field, words = BAD_INPUTS[name]
    good = identity_doc(folder)
    _not_pem(folder)
    return edit(good), field, words
