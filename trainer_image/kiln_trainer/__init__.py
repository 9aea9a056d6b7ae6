"""Everything that runs inside Kiln's pods, and `kiln run`.

Custom training code (`spec.entrypoint`) uses the SDK re-exported here:
`report(metrics, checkpoint_dir=None)`, `should_stop()`, `get_checkpoint()`.
"""

from .sdk import get_checkpoint, report, should_stop

__all__ = ["get_checkpoint", "report", "should_stop"]
