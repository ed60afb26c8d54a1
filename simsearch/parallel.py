"""Large batches as chunks on a few threads: the parallelism of embedding and batch search.

ONNX Runtime, FAISS and numpy release the GIL while they compute, so chunks of a batch run side
by side on plain threads, each on one core: one single-threaded ONNX session serves them all
(its ``run`` is thread-safe), FAISS searches each chunk on one OpenMP thread, and the calling
thread turns finished chunks into results meanwhile. On a 2-core machine this beats intra-op
threading (threads that wake and wait for each other at every layer) and holds one session
instead of two.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from simsearch.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

CHUNK = 128
"""Images (or query vectors) per chunk. The encoder's working memory grows with it (about
0.16 MB per image and worker thread, kept by ONNX Runtime's arena); above ~128 it is no faster."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def check_threads(threads: int | None) -> int:
    """``threads`` as a positive int; None means every available core. Raises ConfigError."""
    if threads is None:
        return available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    return threads


def chunks(n: int, threads: int, size: int = CHUNK) -> list[slice]:
    """``range(n)`` in consecutive near-equal slices of at most ``size``, and at least
    ``threads`` slices when there is enough work (``size // 4`` items each) to share."""
    if n <= 0:
        return []
    if n < 2 * max(1, size // 4):  # too little to share (the common single query): one slice
        return [slice(0, n)]
    parts = -(-n // size)
    parts = max(parts, min(threads, n // max(1, size // 4)))
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def map_in_order(fn: Callable[[T], R], items: Sequence[T], threads: int) -> Iterator[R]:
    """``fn`` over ``items`` on up to ``threads`` worker threads; results in the items' order,
    each as soon as it and those before it are done. One thread or one item: in the caller."""
    if threads <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    pool = _pool(threads)
    futures: list[Future[R]] = [pool.submit(fn, item) for item in items]
    try:
        for future in futures:
            yield future.result()
    finally:  # the caller stopped early (an error): drop what has not started
        for future in futures:
            future.cancel()


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="simsearch")


# A forked child inherits the pools but not their threads: it makes its own on first use.
os.register_at_fork(after_in_child=_pool.cache_clear)
