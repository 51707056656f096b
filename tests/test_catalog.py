"""The release catalog (resources/istio/catalog.yaml) and the choices made from it without a
cluster: which release `--istio` names, the hub checks, the injector's hub edit."""

from __future__ import annotations

import json
from datetime import date

import pytest

from kymamesh.context import Options, RunContext
from kymamesh.errors import PreconditionError, UsageError, VersionGateError
from kymamesh.istio.release import catalog, parse_catalog
from kymamesh.istio.versions import Version
from kymamesh.output import Progress, Result
from kymamesh.resources import load_yaml, resources_dir
from kymamesh.steps.injector import hub_editor
from kymamesh.workflows import pipeline


def test_catalog_holds_the_supported_minors_newest_first() -> None:
    table = catalog()
    assert [line.name for line in table.lines] == ["1.31", "1.30"]
    assert table.default == "1.31"
    assert table.resolve("1.31").line.compatibility_versions == ("1.30", "1.29")
    assert table.chart_sources == (
        "https://blob.istio.io/istio-release/charts",
        "oci://ghcr.io/istio/release/charts",
    )
    assert "registry.istio.io/release" in table.retired_hubs
    assert "gcr.io/istio-release" in table.retired_hubs
    for line in table.lines:
        assert line.hub == "docker.io/istio"
        assert line.latest.minor_line == line.minor
        # every entry's newest patch carries its evidence
        newest = line.known(line.latest)
        assert newest is not None and newest.date and newest.source
        assert all(p.version.minor_line == line.minor for p in line.patches)


def test_catalog_entries_name_no_retired_place() -> None:
    table = catalog()
    for source in table.chart_sources:
        assert source.rstrip("/") not in table.retired_chart_sources
    for line in table.lines:
        assert table.retired_registry(line.hub) is None


def test_a_catalog_entry_whose_latest_is_of_another_minor_is_refused() -> None:
    raw = load_yaml(resources_dir() / "catalog.yaml")
    raw["minors"]["1.31"]["latest"] = "1.30.9"
    with pytest.raises(ValueError, match="another minor"):
        parse_catalog(raw, load_yaml(resources_dir() / "release.yaml"))


@pytest.mark.parametrize(
    ("wanted", "version"),
    [
        (None, "1.31.1"),
        ("1.31", "1.31.1"),
        ("1.30", "1.30.5"),
        ("1.30.3", "1.30.3"),
        ("v1.31", "1.31.1"),
        ("1.31.4", "1.31.4"),
    ],
)
def test_istio_option_names_a_release(wanted: str | None, version: str) -> None:
    assert str(catalog().resolve(wanted).version) == version


@pytest.mark.parametrize("wanted", ["1.29", "1.29.4", "1.32.0", "2.31"])
def test_unsupported_minors_are_refused_naming_the_supported(wanted: str) -> None:
    supported = r"not of a minor kymamesh supports \(1\.31, 1\.30\)"
    with pytest.raises(PreconditionError, match=supported):
        catalog().resolve(wanted)


@pytest.mark.parametrize("wanted", ["latest", "1", "1.31.x", ""])
def test_a_non_version_is_a_usage_error(wanted: str) -> None:
    with pytest.raises(UsageError, match="is not an Istio version"):
        catalog().resolve(wanted or " ")


def test_kubernetes_range_per_minor() -> None:
    line = catalog().resolve("1.31").line
    assert line.supports_kubernetes(Version.parse("1.36.3"))
    assert line.supports_kubernetes(Version.parse("v1.32.0+k3s1"))
    assert not line.supports_kubernetes(Version.parse("1.31.9"))
    assert not line.supports_kubernetes(Version.parse("1.37.0"))
    assert line.kubernetes_range() == "1.32 to 1.36"


@pytest.mark.parametrize(
    "hub", ["docker.io/istio", "mirror.example.com:5000/istio", "localhost:5000/mesh/istio"]
)
def test_hubs_accepted(hub: str) -> None:
    pipeline.check_hub(hub)


@pytest.mark.parametrize(
    ("hub", "why"),
    [
        ("registry.istio.io/release", "switched off"),
        ("gcr.io/istio-release", "switched off"),
        ("gcr.io/istio-release/", "switched off"),
        ("https://docker.io/istio", "not an image registry path"),
        ("docker.io/istio:1.31.1", "not an image registry path"),
        ("Docker.io/Istio", "not an image registry path"),
        ("", "not an image registry path"),
    ],
)
def test_hubs_refused(hub: str, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        pipeline.check_hub(hub)


def test_retired_registry_matches_whole_path_segments() -> None:
    table = catalog()
    assert table.retired_registry("registry.istio.io/release/proxyv2:1.30.3") == (
        "registry.istio.io/release"
    )
    assert table.retired_registry("gcr.io/istio-release") == "gcr.io/istio-release"
    assert table.retired_registry("gcr.io/istio-release-mirror/pilot:1.30.3") is None
    assert table.retired_registry("docker.io/istio/proxyv2:1.30.3") is None


def _injector(hub: str, proxy_image: str = "proxyv2") -> str:
    return json.dumps({"global": {"hub": hub, "proxy": {"image": proxy_image}, "tag": "1.30.3"}})


def test_hub_edit_moves_off_a_retired_registry_only() -> None:
    edit = hub_editor(None, "docker.io/istio")(_injector("registry.istio.io/release"))
    assert edit is not None
    assert json.loads(edit.text)["global"]["hub"] == "docker.io/istio"
    assert edit.summaries == ("global.hub registry.istio.io/release -> docker.io/istio",)
    # a user's mirror is left alone, and so is the right hub: nothing to change
    assert hub_editor(None, "docker.io/istio")(_injector("mirror.example/istio")) is None
    assert hub_editor(None, "docker.io/istio")(_injector("docker.io/istio")) is None


def test_hub_edit_sets_the_asked_hub_and_full_image_references() -> None:
    text = _injector("docker.io/istio", "gcr.io/istio-release/proxyv2")
    edit = hub_editor("mirror.example/istio", "docker.io/istio")(text)
    assert edit is not None
    values = json.loads(edit.text)["global"]
    assert values["hub"] == "mirror.example/istio"
    assert values["proxy"]["image"] == "mirror.example/istio/proxyv2"
    assert values["tag"] == "1.30.3"  # everything else kept
    again = hub_editor("mirror.example/istio", "docker.io/istio")(edit.text)
    assert again is None  # idempotent


def test_eol_dates_parse() -> None:
    raw = load_yaml(resources_dir() / "catalog.yaml")
    raw["minors"]["1.30"]["endOfLife"] = "2027-01-15"
    table = parse_catalog(raw, load_yaml(resources_dir() / "release.yaml"))
    assert table.resolve("1.30").line.end_of_life == date(2027, 1, 15)


class _Server:
    """Only what the Kubernetes range check reads."""

    def __init__(self, version: str) -> None:
        self.version = Version.parse(version)

    def server_version(self) -> Version:
        return self.version


def _context(server: str) -> RunContext:
    ctx = RunContext(options=Options(), result=Result("install"), progress=Progress(quiet=True))
    ctx._cluster = _Server(server)  # type: ignore[assignment]
    return ctx


@pytest.mark.parametrize("server", ["1.31.9", "1.37.0", "v1.30.2+k3s1"])
def test_kubernetes_outside_the_release_range_is_refused(server: str) -> None:
    ctx = _context(server)
    run = pipeline.ChartRun()
    with pytest.raises(
        VersionGateError, match=r"Istio 1\.31 supports Kubernetes 1\.32 to 1\.36"
    ) as err:
        pipeline.resolve_release(ctx, run, pipeline.ChartInputs(istio="1.31"))
    assert "--skip-version-check" in (err.value.hint or "")
    assert run.release is not None  # chosen before the check; nothing was written


def test_skip_version_check_installs_anyway() -> None:
    ctx = _context("1.37.0")
    inputs = pipeline.ChartInputs(istio="1.30", skip_version_check=True)
    assert str(pipeline.resolve_release(ctx, pipeline.ChartRun(), inputs).version) == "1.30.5"


def test_the_release_carries_the_hub_and_notes_an_older_patch() -> None:
    ctx = _context("1.36.3")
    release = pipeline.resolve_release(
        ctx, pipeline.ChartRun(), pipeline.ChartInputs(istio="1.30.3"), "mirror/istio"
    )
    assert release.hub == "mirror/istio"
    assert any("behind 1.30.5" in n for n in ctx.result.notes)
    source = pipeline.release_values(release, pipeline.ChartInputs())
    assert source.by_chart == {"istiod": {"hub": "mirror/istio", "global": {"hub": "mirror/istio"}}}


def test_compatibility_version_must_be_offered() -> None:
    ctx = _context("1.36.3")
    with pytest.raises(UsageError, match=r"offers the behaviour of 1\.30, 1\.29"):
        pipeline.resolve_release(
            ctx,
            pipeline.ChartRun(),
            pipeline.ChartInputs(istio="1.31", compatibility_version="1.28"),
        )
    with pytest.raises(UsageError, match="offers the behaviour of none"):
        pipeline.resolve_release(
            ctx,
            pipeline.ChartRun(),
            pipeline.ChartInputs(istio="1.30", compatibility_version="1.29"),
        )
    inputs = pipeline.ChartInputs(istio="1.31", compatibility_version="1.30")
    release = pipeline.resolve_release(ctx, pipeline.ChartRun(), inputs)
    values = pipeline.release_values(release, inputs).by_chart
    assert {chart: v.get("compatibilityVersion") for chart, v in values.items()} == {
        "istiod": "1.30",
        "base": "1.30",
        "gateway": "1.30",
    }


def test_a_user_hub_in_values_on_a_retired_registry_is_refused() -> None:
    release = catalog().resolve("1.31")
    stack = pipeline.build_values(
        pipeline.ChartInputs(set_values=("istiod.global.hub=gcr.io/istio-release",)), release
    )
    with pytest.raises(
        UsageError, match=r"istiod\.global\.hub is gcr\.io/istio-release \(from --set"
    ):
        pipeline.with_release_values(stack, release, pipeline.ChartInputs())
    ok = pipeline.build_values(
        pipeline.ChartInputs(set_values=("istiod.hub=my.mirror/istio",)), release
    )
    merged = pipeline.with_release_values(ok, release, pipeline.ChartInputs()).merged("istiod")
    assert merged["hub"] == "my.mirror/istio"  # the user's own wins
    assert merged["global"]["hub"] == "docker.io/istio"
