"""Living beside the user's own Helm, end to end with the real helm (Helm 4, which applies
server-side): after `kymamesh install`, a plain `helm upgrade --reuse-values` of istiod
fails on the fields the Kyma patch owns and leaves the release failed; `status` names the
release, Helm's reason and what to run; both supported ways then work (the value through
`kymamesh install --set`, or `helm upgrade --force-conflicts` then `kymamesh patch`), and
the release stays kymamesh's (its label survives the person's upgrades)."""

from __future__ import annotations

from typing import Any

from support_lifecycle import CHARTS, NAMESPACE, get, kymamesh

ISTIOD_CHART = str(CHARTS / "istiod")


def team_label(c: Any) -> str | None:
    istiod = get(c, "deployment", "istiod", "-n", NAMESPACE)
    assert istiod is not None
    return (istiod["metadata"].get("labels") or {}).get("team")


def status(c: Any) -> tuple[int, dict[str, Any]]:
    run = kymamesh(c, "status", "-o", "json")
    assert run.code in (0, 7), str(run)
    return run.code, run.doc["data"]


def own_upgrade(c: Any, *args: str, check: bool = True) -> Any:
    return c.helm_run(
        "upgrade", "istiod", ISTIOD_CHART, "-n", NAMESPACE, "--reuse-values", *args,
        version=4, check=check,
    )  # fmt: skip


def test_both_supported_ways_to_change_a_value_kymamesh_does_not_set(fresh_cluster: Any) -> None:
    c = fresh_cluster()
    run = kymamesh(c, "install", "--charts-dir", str(CHARTS), "-y")
    assert run.code == 0, str(run)

    # A plain helm upgrade meets the fields the patch owns and leaves the release failed.
    refused = own_upgrade(c, "--set", "deploymentLabels.team=payments", check=False)
    assert refused.returncode != 0
    assert 'conflict with "kymamesh"' in refused.stderr, refused.stderr
    code, data = status(c)
    assert code == 7
    [problem] = [p for p in data["problems"] if p.startswith("Helm release")]
    assert problem.startswith("Helm release istio-system/istiod is failed (revision 2: ")
    assert 'conflict with "kymamesh"' in problem
    assert "run `kymamesh install` to repair it" in problem
    assert "`--force-conflicts`, then `kymamesh patch`" in problem

    # Way 1: the value through kymamesh, which repairs the release on the way.
    run = kymamesh(
        c, "install", "--charts-dir", str(CHARTS), "-y", "--set", "istiod.deploymentLabels.team=a"
    )
    assert run.code == 0, str(run)
    assert team_label(c) == "a"
    code, data = status(c)
    assert code == 0, data["problems"]

    # Way 2: the person's own helm, taking the fields back, then the patch puts them back.
    own_upgrade(c, "--set", "deploymentLabels.team=b", "--force-conflicts")
    assert team_label(c) == "b"
    code, data = status(c)
    assert code == 7 and any(p.startswith("patch step") for p in data["problems"]), data
    run = kymamesh(c, "patch", "-y")
    assert run.code == 0, str(run)
    code, data = status(c)
    assert code == 0, data["problems"]
    assert team_label(c) == "b"  # the person's value stays
    # their revision kept kymamesh's release label
    assert data["istio"]["installedBy"] == "kymamesh"
    assert {r["name"]: r["byKymamesh"] for r in data["releases"]}["istiod"] is True

    # ... and a later install still manages the release (given the value too).
    run = kymamesh(
        c, "install", "--charts-dir", str(CHARTS), "-y", "--set", "istiod.deploymentLabels.team=b"
    )
    assert run.code == 0, str(run)
    assert team_label(c) == "b"
