"""One local Ray cluster for the whole trainer test session (Ray start-up costs seconds)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from kiln_trainer.train_setup import LOCAL_HEALTH_CHECK_INTERVAL_S

# A custom Ray resource standing in for GPUs on machines without any (test_one_worker_per_gpu.py): Ray
# schedules it like GPUs, without CUDA. Two of them, as on a worker pod with gpusPerWorker: 2.
FAKE_GPU = "fake_gpu"
FAKE_GPUS = 2


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    # Short path: Ray's socket paths must stay under ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="kt-", dir="/tmp")
    # As `kiln run` does for its own local cluster (see kiln_trainer.train_setup.connect_ray).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", LOCAL_HEALTH_CHECK_INTERVAL_S)
    ray.init(num_cpus=2, num_gpus=0, resources={FAKE_GPU: FAKE_GPUS}, include_dashboard=False, _temp_dir=temp_dir,
             logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
