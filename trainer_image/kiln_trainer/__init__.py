"""Everything that runs inside Kiln's pods, and `kiln run`.

Custom training code (`spec.entrypoint`) uses the SDK re-exported here:
`report(metrics, checkpoint_dir=None)`, `should_stop()`, `get_checkpoint()`, `save_model(state_dict)`.
"""

from .sdk import get_checkpoint, report, save_model, should_stop

__all__ = ["get_checkpoint", "report", "save_model", "should_stop"]
