"""Ray Serve with an ivf-fastscan index in shards, on its own local cluster (after
tests/test_ray_serve.py, whose fixtures and helpers it uses): the shards answer with their codes'
approximate scores, and the front re-ranks their candidates with the catalog vectors, so the
answers are those of the same index searched in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simsearch import vector_index
from tests import test_ray_serve as base
from tests.test_ray_serve import assert_same_answers, deployed, sharded_copy

# The module-scoped fixtures, here for this module (and conftest's cluster: one of its own).
port = base.port
queries = base.queries

pytestmark = pytest.mark.slow


def test_sharded_fast_scan_index_answers_as_in_one_process(
    cluster: Any,
    pca_index_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    port: int,
    queries: list[tuple[str, bytes]],
) -> None:
    """ivf-fastscan shards answer with approximate scores; the front re-ranks their candidates
    with the catalog vectors, as a sharded index in one process does."""
    target = tmp_path_factory.mktemp("fastscan") / "index"
    index_dir = sharded_copy(pca_index_dir, target, 2, kind=vector_index.FASTSCAN)
    with deployed(cluster, index_dir, port, replicas=1) as service:
        assert_same_answers(service, queries)
