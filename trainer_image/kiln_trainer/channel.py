"""The driver's inbox for progress events, run as a small Ray actor.

Why not `ray.train.report`: Ray Train 2.60 drains each worker's one-slot report queue
every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s), so a per-epoch report blocks short epochs
(measured: 10 tiny epochs 36 s vs 16.6 s at 0.1 s), and its callbacks run in the
controller actor, not in the driver that serves /metrics. Instead rank 0 sends wire events
(events.py) to a `ProgressChannel` actor with fire-and-forget `.remote()` calls (no `ray.get`
on the training path); the driver drains it a few times a second.

The same actor carries the one thing that flows the other way: a stop request (Ctrl-C
in `kiln run`), which rank 0 reads once per epoch and all-reduces with the validation
metrics so every rank stops after the same epoch.
"""

from __future__ import annotations

from typing import Any


class ProgressChannel:
    """Buffer of wire events plus a stop flag; wrapped as a Ray actor by `progress_actor()`."""

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._stop_requested = False

    def push(self, event: dict[str, Any]) -> None:
        self._events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        events, self._events = self._events, []
        return events

    def request_stop(self) -> None:
        self._stop_requested = True

    def stop_requested(self) -> bool:
        return self._stop_requested


def progress_actor() -> Any:
    """Start a ProgressChannel actor: tiny, CPU-free, so it never competes with workers.

    Pinned to the driver's own node: left to Ray's scheduler a CPU-free actor may land on a
    worker node, and losing that worker pod would then take the driver's progress with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    on_driver_node = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, max_concurrency=4, scheduling_strategy=on_driver_node)(ProgressChannel).remote()
