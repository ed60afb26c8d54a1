"""LiveIndex: how a long-lived reader follows its index directory (no server, no cluster)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from simsearch.errors import IndexCorruptError, UnavailableError
from simsearch.live import LiveIndex
from simsearch.search_index import SearchIndex


@pytest.fixture
def directory(pca_index_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(pca_index_dir, copy)
    return copy


def add_one(directory: Path, item_id: str) -> None:
    """Another writer saves a new version with one more item."""
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 4:24, 10:18] = 255  # a bright bar
    writer = SearchIndex.load(directory)
    writer.add(image, [item_id])
    writer.save(directory)


def test_background_reload_never_holds_up_a_caller(directory: Path) -> None:
    release = threading.Event()
    loads: list[Path] = []

    def slow_load(path: Path) -> SearchIndex:
        loads.append(path)
        release.wait(30)  # a shard on another node taking its time
        return SearchIndex.load(path)

    live = LiveIndex(SearchIndex.load(directory), check_every=0.0, load=slow_load, background=True)
    add_one(directory, "new/one")
    started = time.monotonic()
    for _ in range(5):  # every caller gets the held version at once; one load is started
        assert len(live.current()) == 400
    assert time.monotonic() - started < 1.0
    time.sleep(0.2)
    assert loads == [directory]
    release.set()
    deadline = time.monotonic() + 30
    while len(live.current()) != 401:
        assert time.monotonic() < deadline, "the new version was not swapped in"
        time.sleep(0.05)
    assert loads == [directory]


def test_unavailable_parts_are_retried_broken_versions_are_not(directory: Path) -> None:
    outcomes: list[Exception | None] = [UnavailableError("shard 1 did not answer"), None]
    calls = 0

    def flaky_load(path: Path) -> SearchIndex:
        nonlocal calls
        calls += 1
        problem = outcomes.pop(0) if outcomes else None
        if problem is not None:
            raise problem
        return SearchIndex.load(path)

    live = LiveIndex(SearchIndex.load(directory), check_every=0.0, load=flaky_load)
    add_one(directory, "new/one")
    assert len(live.current()) == 400  # a shard did not answer: kept, and tried again
    assert len(live.current()) == 401 and calls == 2

    outcomes.append(IndexCorruptError("shard 2 cannot load this version"))
    add_one(directory, "new/two")
    assert len(live.current()) == 401  # broken: skipped ...
    assert len(live.current()) == 401 and calls == 3  # ... and not tried again
