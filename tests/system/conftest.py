"""Fixtures of the system tests: a real Redis Cluster, bare (three masters) or replicated (3 + 3)."""

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster, replicated_cluster
from tests.support.redis_server import require_redis


@pytest.fixture
def cluster_url() -> Iterator[str]:
    """Three masters on free ports, slots assigned by redis-cli --cluster create."""
    require_redis()
    with tempfile.TemporaryDirectory() as directory:
        cluster = Cluster(Path(directory), masters=3).start()
        try:
            yield f"redis://127.0.0.1:{cluster.ports[0]}/0"
        finally:
            cluster.stop()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """3 masters + 3 replicas, stopped afterwards."""
    with replicated_cluster() as running:
        yield running
