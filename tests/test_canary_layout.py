"""Which releases a revision-based (canary) install manages, and with which values
(`pipeline.release_layout`), on the in-memory cluster: pure decisions over the istiod
Deployments found."""

from __future__ import annotations

from typing import Any

import pytest

from kymamesh import pipeline
from kymamesh.context import Options, RunContext
from kymamesh.errors import PreconditionError
from kymamesh.output import Progress, Result
from kymamesh.release import catalog, pinned
from kymamesh.versions import Version
from tests.support_fake_cluster import FakeCluster

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


def _ctx(*deployments: dict[str, Any]) -> RunContext:
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    ctx = RunContext(options=Options(), result=Result("install"), progress=Progress(quiet=True))
    ctx._cluster = FakeCluster([namespace, *deployments])  # type: ignore[assignment]
    ctx.release = catalog().release(Version(1, 30, 3))  # the release these layouts install
    return ctx


def _layout(ctx: RunContext, revision_based: bool) -> pipeline.ReleaseLayout:
    stack = pipeline.build_values(pipeline.ChartInputs(), pinned())
    return pipeline.release_layout(ctx, stack, revision_based)


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
