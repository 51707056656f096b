"""Object diffs: a Secret's values never show, only its keys and whether each is new,
changed or unchanged; other objects diff as before."""

from __future__ import annotations

import base64
from typing import Any

from kymamesh.diffs import object_diff, secret_markers

PASSWORD = "hunter2-not-for-output"
TOKEN = "tok-3f9a-not-for-output"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(data: dict[str, str] | None = None, string_data: dict[str, str] | None = None) -> Any:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "namespace": "istio-system", "labels": {"app": "x"}},
        "type": "Opaque",
    }
    if data is not None:
        obj["data"] = data
    if string_data is not None:
        obj["stringData"] = string_data
    return obj


def assert_hidden(text: str, *values: str) -> None:
    for value in values:
        assert value not in text
        assert b64(value) not in text


def test_new_secret_shows_keys_not_values() -> None:
    diff = object_diff(
        None, secret({"password": b64(PASSWORD)}, {"token": TOKEN}), "Secret/istio-system/s"
    )
    assert "+  password: (redacted, new)" in diff
    assert "+  token: (redacted, new)" in diff
    assert "stringData" not in diff
    assert "+type: Opaque" in diff
    assert_hidden(diff, PASSWORD, TOKEN)


def test_changed_and_unchanged_keys_are_told_apart() -> None:
    live = secret({"password": b64(PASSWORD), "token": b64(TOKEN)})
    wanted = secret({"password": b64(PASSWORD)}, {"token": "another-token"})
    diff = object_diff(live, wanted, "Secret/istio-system/s")
    assert "-  token: (redacted)" in diff
    assert "+  token: (redacted, changed)" in diff
    assert "   password: (redacted, unchanged)" in diff
    assert_hidden(diff, PASSWORD, TOKEN, "another-token")


def test_unchanged_secret_diffs_as_nothing() -> None:
    live = secret({"password": b64(PASSWORD)})
    # the same value, given as stringData, as a chart may render it
    assert object_diff(live, secret(string_data={"password": PASSWORD}), "s") == ""


def test_changed_label_shows_without_values() -> None:
    live = secret({"password": b64(PASSWORD)})
    wanted = secret({"password": b64(PASSWORD)})
    wanted["metadata"]["labels"] = {"app": "y"}
    diff = object_diff(live, wanted, "s")
    assert "+    app: y" in diff
    assert_hidden(diff, PASSWORD)


def test_data_that_is_not_base64_is_still_hidden() -> None:
    diff = object_diff(None, secret({"password": PASSWORD}), "s")
    assert "(redacted, new)" in diff
    assert PASSWORD not in diff


def test_a_secret_inside_a_list_is_hidden() -> None:
    listed = {
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"name": "l"},
        "items": [secret({"password": b64(PASSWORD)}, {"token": TOKEN})],
    }
    diff = object_diff(None, listed, "List/l")
    assert "password: (redacted)" in diff and "token: (redacted)" in diff
    assert_hidden(diff, PASSWORD, TOKEN)


def test_other_kinds_diff_their_data() -> None:
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "n"},
        "data": {"mesh": "plain"},
    }
    assert "+  mesh: plain" in object_diff(None, configmap, "c")


def test_markers_for_a_value_made_on_apply() -> None:
    live, wanted = secret_markers({"tls.key": b"old"}, {"tls.key": None})
    assert live == {"tls.key": "(redacted)"}
    assert wanted == {"tls.key": "(redacted, changed)"}
    assert secret_markers(None, {"tls.key": None}) == (None, {"tls.key": "(redacted, new)"})
    assert secret_markers({"k": b"v"}, {"k": b"v"}) == (
        {"k": "(redacted, unchanged)"},
        {"k": "(redacted, unchanged)"},
    )
