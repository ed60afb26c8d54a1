"""A long-lived reader's view of an index directory that follows ``add``/``remove``/rebuilds.

Writers replace ``manifest.json`` atomically (``simsearch.storage``), so a changed manifest file
(new inode, size or mtime) means a new complete index. :meth:`LiveIndex.current` notices that at
most once per ``check_every`` seconds and swaps in the new index only once it has loaded and
verified; while it loads, and if it fails to load, requests keep using the previous one. A
version that failed is not tried again until the manifest changes again, unless only a part of
a distributed index was unavailable at the time (UnavailableError): that is retried at the next
check.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from simsearch import storage
from simsearch.errors import SimsearchError, UnavailableError
from simsearch.search_index import SearchIndex

log = logging.getLogger("simsearch.live")


def _stamp(directory: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(directory / storage.MANIFEST)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class LiveIndex:
    """The newest good index at ``index.directory`` (or a fixed index if it has none), opened
    with ``load`` (by default :meth:`SearchIndex.load`).

    By default the caller of :meth:`current` that notices a change loads the new version (a
    local load: about a second at most). With ``background`` a thread does, and every caller
    goes on with the held version: for loads that wait on other processes (shards on a
    cluster), which may take long when one of them does not answer.
    """

    def __init__(
        self,
        index: SearchIndex,
        check_every: float = 1.0,
        load: Callable[[Path], SearchIndex] = SearchIndex.load,
        background: bool = False,
    ) -> None:
        self._index = index
        self._load = load
        self._background = background
        self._check_every = check_every
        self._directory = index.directory
        self._stamp = _stamp(index.directory) if index.directory is not None else None
        self._checked = time.monotonic()
        self._lock = threading.Lock()  # one reload at a time; readers never wait on it

    def current(self) -> SearchIndex:
        directory = self._directory
        if directory is None or time.monotonic() - self._checked < self._check_every:
            return self._index
        if self._lock.acquire(blocking=False):
            if self._background:
                self._checked = time.monotonic()  # no other caller starts one meanwhile
                threading.Thread(
                    target=self._reload_and_release, args=(directory,), daemon=True
                ).start()
            else:
                self._reload_and_release(directory)
        return self._index

    def _reload_and_release(self, directory: Path) -> None:
        try:
            self._reload_if_changed(directory)
        finally:
            self._lock.release()

    def refresh(self) -> SearchIndex:
        """Check the directory now (not at the next tick) and return the newest good index
        (with ``background``: start that check, and return the index held)."""
        if self._background:
            self._checked = float("-inf")
            return self.current()
        if self._directory is not None:
            with self._lock:
                self._reload_if_changed(self._directory)
        return self._index

    def _reload_if_changed(self, directory: Path) -> None:
        self._checked = time.monotonic()
        stamp = _stamp(directory)
        if stamp is None or stamp == self._stamp:
            return
        try:
            fresh = self._load(directory)
        except UnavailableError as exc:
            log.warning(
                "index at %s changed but could not be loaded now, retrying: %s", directory, exc
            )
            return  # the stamp stays old: tried again at the next check
        except SimsearchError as exc:
            log.warning(
                "index at %s changed but did not load, keeping the previous one: %s", directory, exc
            )
        else:
            self._index = fresh
            log.info("reloaded %s: %d items", directory, len(fresh))
        self._stamp = stamp  # a broken version is not retried until the manifest changes again
