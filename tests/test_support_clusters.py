"""The machinery that starts test clusters ahead of need, and orders the files (no cluster)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import support_clusters
from support_clusters import Pool

from tests.conftest import _longest_files_first

FAKE_UP = """
import sys, pathlib
args = sys.argv[1:]
directory = pathlib.Path(args[args.index("--dir") + 1])
if args[0] == "up":
    if "fail" in directory.name:
        print("up: kube-apiserver exited", file=sys.stderr)
        sys.exit(1)
    (directory / "cluster.json").write_text("{}")
elif args[0] == "down":
    (directory / "stopped").write_text("yes")
"""


@pytest.fixture
def fake_testcluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    script = tmp_path / "testcluster.py"
    script.write_text(FAKE_UP)
    monkeypatch.setattr(support_clusters, "TESTCLUSTER_PY", script)
    return tmp_path


def _pool(root: Path, names: list[str]) -> Pool:
    pool = Pool()
    pool.enabled = True
    todo = iter(names)

    def make_dir() -> Path:
        d = root / next(todo)
        d.mkdir()
        return d

    pool.make_dir = make_dir
    return pool


def test_take_without_a_spare_is_none(fake_testcluster: Path) -> None:
    assert _pool(fake_testcluster, []).take() is None


def test_a_prefetched_cluster_is_handed_over_once(fake_testcluster: Path) -> None:
    pool = _pool(fake_testcluster, ["c1", "c2"])
    pool.prefetch()
    pool.prefetch()  # one spare at a time
    directory = pool.take()
    assert directory == fake_testcluster / "c1"
    assert (directory / "cluster.json").exists()
    assert pool.take() is None
    assert (pool.started, pool.taken) == (1, 1)


def test_a_spare_that_failed_is_stopped_and_not_handed_over(
    fake_testcluster: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = _pool(fake_testcluster, ["fail1"])
    pool.prefetch()
    assert pool.take() is None
    assert (fake_testcluster / "fail1" / "stopped").exists()  # `down` ran
    assert "kube-apiserver exited" in capsys.readouterr().err


def test_close_stops_an_unused_spare_and_waits_for_the_stopping(fake_testcluster: Path) -> None:
    pool = _pool(fake_testcluster, ["c1", "c2"])
    (fake_testcluster / "used").mkdir()
    pool.stop_later(fake_testcluster / "used")
    pool.prefetch()
    pool.close()
    assert (fake_testcluster / "used" / "stopped").exists()
    assert (fake_testcluster / "c1" / "stopped").exists()
    assert pool.spare is None and pool.stopping == []


def test_prefetch_can_be_switched_off(fake_testcluster: Path) -> None:
    pool = _pool(fake_testcluster, ["c1"])
    pool.enabled = False
    pool.prefetch()
    assert pool.spare is None and pool.take() is None


@dataclass
class FakeItem:
    nodeid: str
    fixturenames: list[str] = field(default_factory=list)


def test_files_run_longest_first_and_keep_their_tests_in_order() -> None:
    items = [
        FakeItem("tests/test_a.py::one"),
        FakeItem("tests/test_b_cluster.py::reads", ["cluster", "namespace"]),
        FakeItem("tests/test_c_cluster.py::fresh", ["fresh_cluster"]),
        FakeItem("tests/test_b_cluster.py::reads_again", ["cluster"]),
        FakeItem("tests/test_a.py::two"),
        FakeItem("tests/test_c_cluster.py::second", ["cluster"]),
    ]
    _longest_files_first(items)  # type: ignore[arg-type]
    assert [i.nodeid for i in items] == [
        "tests/test_c_cluster.py::fresh",
        "tests/test_c_cluster.py::second",
        "tests/test_b_cluster.py::reads",
        "tests/test_b_cluster.py::reads_again",
        "tests/test_a.py::one",
        "tests/test_a.py::two",
    ]
