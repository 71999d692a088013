"""The Ray cluster the executor tests run their labs on (see tests/helpers/ray_cluster.py),
one per module: starting it takes most of a minute."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.ray_cluster import Cluster, running_cluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("ray")
    with running_cluster() as found:
        yield found
