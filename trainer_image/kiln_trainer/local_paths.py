"""Every local path in a job means what the user typed, wherever it is read.

`kiln run` makes them absolute against its own working directory before anything starts: Ray
Train runs the training function in a working directory of its own (and removes it at the end),
so a relative data file, checkpoint directory or model path given to the workers as typed would
be looked for, or written, somewhere else and lost.
"""

from __future__ import annotations

import os
from typing import Optional

from kiln_api import TrainingJob

NON_PATH_PREFIXES = ("builtin:", "synthetic:")


def is_local_path(location: str) -> bool:
    """A plain filesystem path (not a built-in data set, not a URL such as pvc://, s3:// or file://)."""
    return not location.startswith(NON_PATH_PREFIXES) and "://" not in location


def absolute(location: Optional[str], cwd: str) -> Optional[str]:
    """`location` made absolute against `cwd` when it is a local path; anything else unchanged."""
    if not location or not is_local_path(location):
        return location
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(location)))


def with_absolute_paths(job: TrainingJob, cwd: str) -> TrainingJob:
    """A copy of `job` whose data source, pretrained weights and checkpoint storage are absolute."""
    job = job.model_copy(deep=True)
    spec = job.spec
    spec.data.source = absolute(spec.data.source, cwd) or spec.data.source
    spec.checkpoint.storage = absolute(spec.checkpoint.storage, cwd)
    if spec.model is not None and spec.model.pretrained is not None:
        spec.model.pretrained.path = absolute(spec.model.pretrained.path, cwd) or spec.model.pretrained.path
    return job
