"""Fixtures for the tests of the bench tooling (the product's tests are under tests/ and never import bench/)."""

import os
import tempfile
from pathlib import Path

import pytest

# The quick bench launches real runs, which take machine-wide device locks: lock in a folder of our own, as tests/ does,
# so a developer's run on this machine cannot make these tests wait or fail.
os.environ.setdefault("TRAINER_LOCK_DIR", tempfile.mkdtemp(prefix="bench-test-device-locks-"))


@pytest.fixture(autouse=True)
def no_leaked_shm_buffers():
    """A benchmark's runs must leave /dev/shm as they found it (DeepSpeed's CPU all-reduce buffers, 66 MB per rank)."""
    shm = Path("/dev/shm")
    before = set(shm.glob("deepspeed_allreduce_buffer_*"))
    yield
    leaked = sorted(p.name for p in set(shm.glob("deepspeed_allreduce_buffer_*")) - before)
    assert not leaked, f"runs left shared-memory buffers behind: {leaked}"
