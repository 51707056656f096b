"""Which releases a revision-based (canary) install manages, and with which values
(`pipeline.release_layout`), on the in-memory cluster: pure decisions over the istiod
Deployments found and the Helm releases that made them (a revision kymamesh installed
by revisions is known by its release, whatever version it runs)."""

from __future__ import annotations

from typing import Any

import pytest

from kymamesh.adapters.helm import DeployedRelease
from kymamesh.context import Options, RunContext
from kymamesh.errors import PreconditionError
from kymamesh.istio.inventory import INSTALL_DESCRIPTION
from kymamesh.istio.release import catalog, pinned
from kymamesh.istio.versions import Version
from kymamesh.output import Progress, Result
from kymamesh.workflows import pipeline
from tests.support_fake_cluster import FakeCluster
from tests.support_inventory import FakeHelm

NS = "istio-system"


def _istiod(revision: str, version: str, release: str) -> dict[str, Any]:
    name = "istiod" if revision == "default" else f"istiod-{revision}"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"app": "istiod", "istio.io/rev": revision},
            "annotations": {"meta.helm.sh/release-name": release},
        },
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "discovery", "image": f"docker.io/istio/pilot:{version}"}
                    ]
                }
            }
        },
    }


def _release(deployment: dict[str, Any], description: str) -> DeployedRelease:
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    version = Version.parse(image.rsplit(":", 1)[1])
    return DeployedRelease(
        name=deployment["metadata"]["annotations"]["meta.helm.sh/release-name"],
        namespace=NS,
        revision=1,
        status="deployed",
        chart="istiod",
        chart_version=version,
        app_version=str(version),
        values={},
        description=description,
    )


def _ctx(*deployments: dict[str, Any], by: str = INSTALL_DESCRIPTION) -> RunContext:
    """The istiods, each with the Helm release named in its annotation, made by `by`."""
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    ctx = RunContext(options=Options(), result=Result("install"), progress=Progress(quiet=True))
    ctx._cluster = FakeCluster([namespace, *deployments])  # type: ignore[assignment]
    ctx._helm = FakeHelm([_release(d, by) for d in deployments])  # type: ignore[assignment]
    return ctx


def _layout(ctx: RunContext, revision_based: bool) -> pipeline.ReleaseLayout:
    stack = pipeline.build_values(pipeline.ChartInputs(), pinned())
    run = pipeline.ChartRun(catalog().release(Version(1, 30, 3)))  # the release these install
    return pipeline.release_layout(ctx, run, stack, revision_based)


def test_in_place_is_the_release_table() -> None:
    layout = _layout(_ctx(_istiod("default", "1.29.4", "istiod")), revision_based=False)
    assert layout.rows == pinned().releases
    assert not layout.canary and layout.istiod_release == "istiod"


def test_a_canary_beside_the_old_revision() -> None:
    layout = _layout(_ctx(_istiod("default", "1.29.4", "istiod")), revision_based=True)
    assert [r.release for r in layout.rows] == ["istio-base", "istiod-1-30-3"]  # no gateway
    assert layout.revision == "1-30-3" and layout.istiod_release == "istiod-1-30-3"
    assert layout.stack.merged("istiod")["revision"] == "1-30-3"
    assert layout.stack.merged("base")["defaultRevision"] == "default"  # validator stays
    assert "kymamesh upgrade promote" in layout.next_steps[0]


def test_once_the_canary_runs_every_install_keeps_its_layout() -> None:
    ctx = _ctx(_istiod("default", "1.29.4", "istiod"), _istiod("1-30-3", "1.30.3", "istiod-1-30-3"))
    layout = _layout(ctx, revision_based=False)
    assert [r.release for r in layout.rows] == ["istio-base", "istiod-1-30-3"]


def test_after_finish_the_gateway_and_the_validator_move_to_the_canary() -> None:
    layout = _layout(_ctx(_istiod("1-30-3", "1.30.3", "istiod-1-30-3")), revision_based=False)
    assert [r.release for r in layout.rows] == [
        "istio-base",
        "istiod-1-30-3",
        "istio-ingressgateway",
    ]
    assert layout.stack.merged("base")["defaultRevision"] == "1-30-3"
    assert layout.next_steps == []


def test_a_revisioned_istiod_of_another_release_is_not_the_canary() -> None:
    ctx = _ctx(_istiod("1-30-3", "1.30.3", "someone-elses"))
    assert not _layout(ctx, revision_based=False).canary


def test_a_revision_release_that_kymamesh_did_not_make_is_not_the_canary() -> None:
    # Istio's own canary how-to: `helm install istiod-canary istio/istiod --set revision=canary`
    ctx = _ctx(_istiod("canary", "1.29.4", "istiod-canary"), by="Install complete")
    assert not _layout(ctx, revision_based=False).canary


def test_a_finished_canary_of_another_version_is_converged_on_not_doubled() -> None:
    """After `finish`, a kymamesh that pins another version upgrades that revision in
    place: no unnamed istiod is added beside it."""
    ctx = _ctx(_istiod("1-29-4", "1.29.4", "istiod-1-29-4"))
    layout = _layout(ctx, revision_based=False)
    assert [r.release for r in layout.rows] == [
        "istio-base",
        "istiod-1-29-4",
        "istio-ingressgateway",
    ]
    assert layout.stack.merged("istiod")["revision"] == "1-29-4"
    assert layout.stack.merged("base")["defaultRevision"] == "1-29-4"


def test_a_canary_of_another_version_under_way_is_refused_for_a_third() -> None:
    ctx = _ctx(
        _istiod("1-29-3", "1.29.3", "istiod-1-29-3"), _istiod("1-29-4", "1.29.4", "istiod-1-29-4")
    )
    with pytest.raises(PreconditionError, match="canary upgrade is under way"):
        _layout(ctx, revision_based=False)


def test_revision_based_after_finish_is_refused() -> None:
    """Only the canary is left and it runs the pinned release: nothing to upgrade."""
    ctx = _ctx(_istiod("1-30-3", "1.30.3", "istiod-1-30-3"))
    with pytest.raises(PreconditionError, match=r"already runs Istio 1\.30\.3"):
        _layout(ctx, revision_based=True)


def test_the_canary_state_is_the_newest_kymamesh_revision() -> None:
    from kymamesh.workflows.canary import read_state

    ctx = _ctx(
        _istiod("default", "1.28.2", "istiod"),
        _istiod("1-29-4", "1.29.4", "istiod-1-29-4"),
    )
    state = read_state(ctx)
    assert state.revision == "1-29-4" and [p.revision for p in state.others] == ["default"]
    ctx = _ctx(
        _istiod("1-29-4", "1.29.4", "istiod-1-29-4"),
        _istiod("1-30-3", "1.30.3", "istiod-1-30-3"),
    )
    assert read_state(ctx).revision == "1-30-3"


@pytest.mark.parametrize(
    ("deployments", "words"),
    [
        ((), "there is no istiod"),
        ((_istiod("default", "1.30.3", "istiod"),), "already runs Istio 1.30.3"),
    ],
)
def test_refused_with_nothing_to_upgrade(deployments: Any, words: str) -> None:
    with pytest.raises(PreconditionError, match=words):
        _layout(_ctx(*deployments), revision_based=True)
