"""The driver's inbox for progress events: a small Ray actor, or a plain object in-process.

Why not `ray.train.report`: Ray Train 2.60 drains each worker's one-slot report queue
every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s), so a per-epoch report blocks short epochs
(measured: 10 tiny epochs 36 s vs 16.6 s at 0.1 s), and its callbacks run in the
controller actor, not in the driver that serves /metrics. Instead rank 0 sends wire events
(events.py) to a `ProgressChannel` actor with fire-and-forget `.remote()` calls (no `ray.get`
on the training path); the driver drains it a few times a second.

The same actor carries the one thing that flows the other way: a stop request (Ctrl-C
in `kiln run`), which rank 0 reads once per epoch and all-reduces with the validation
metrics so every rank stops after the same epoch.

`kiln run` with one training worker trains in its own process, without Ray: the driver then
holds the `ProgressChannel` itself and the worker calls it directly. Both sides reach the
channel through one small interface each, so the training loop and the driver's handling are
the same either way:

- the worker's `ChannelClient` (`push`, `push_final`, `stop_requested`): `RayChannelClient`
  over the actor, or `InProcessClient` over the object;
- the driver's `Inbox` (`drain`, `request_stop`): `ActorInbox` over the actor, or the
  `ProgressChannel` object itself.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

log = logging.getLogger("kiln_trainer.channel")
STOP_QUERY_TIMEOUT_S = 30.0
FINAL_EVENT_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 60.0


class ProgressChannel:
    """Buffer of wire events plus a stop flag; wrapped as a Ray actor by `progress_actor()`."""

    def __init__(self) -> None:
        # The actor serves up to 4 calls at once on threads, and in-process the worker and the
        # driver are two threads: the lock keeps drain's swap whole.
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._stop_requested = False

    def push(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._events.append(event)

    def drain(self) -> list[dict[str, Any]]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def request_stop(self) -> None:
        self._stop_requested = True

    def stop_requested(self) -> bool:
        return self._stop_requested


class ChannelClient(Protocol):
    """What a training worker does with the driver's channel."""

    def push(self, event: dict[str, Any]) -> None:
        """Send an event without waiting for it to be received."""

    def push_final(self, event: dict[str, Any]) -> None:
        """Send the last event and wait until the channel holds it (and everything before it)."""

    def stop_requested(self) -> bool:
        """Whether the driver asked training to stop."""


class Inbox(Protocol):
    """What the driver does with its channel."""

    def drain(self) -> list[dict[str, Any]]: ...

    def request_stop(self) -> None: ...


class InProcessClient:
    """A worker in the driver's own process: direct calls on the driver's `ProgressChannel`."""

    def __init__(self, channel: ProgressChannel) -> None:
        self.channel = channel

    def push(self, event: dict[str, Any]) -> None:
        self.channel.push(event)

    def push_final(self, event: dict[str, Any]) -> None:
        self.channel.push(event)

    def stop_requested(self) -> bool:
        return self.channel.stop_requested()


class RayChannelClient:
    """A Ray Train worker's side of the driver's `ProgressChannel` actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def push(self, event: dict[str, Any]) -> None:
        self.actor.push.remote(event)

    def push_final(self, event: dict[str, Any]) -> None:
        # Fire-and-forget calls still queued in this worker when the train function returns can be
        # dropped as Ray Train tears the worker group down; waiting on the last call (calls from one
        # caller run in order) makes sure the outcome, and everything before it, arrives.
        import ray

        ray.get(self.actor.push.remote(event), timeout=FINAL_EVENT_TIMEOUT_S)

    def stop_requested(self) -> bool:
        import ray

        try:
            return bool(ray.get(self.actor.stop_requested.remote(), timeout=STOP_QUERY_TIMEOUT_S))
        except ray.exceptions.RayActorError:
            # The driver owns the channel: it is gone, so nobody will read what we train. Stop
            # (with a checkpoint) rather than race a restarted driver for the checkpoint storage.
            log.warning("the driver is gone; stopping after this epoch's checkpoint")
            return True
        except ray.exceptions.GetTimeoutError:
            log.warning("the driver did not answer a stop query within %.0fs; training on", STOP_QUERY_TIMEOUT_S)
            return False


class ActorInbox:
    """The driver's side of its `ProgressChannel` actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def drain(self) -> list[dict[str, Any]]:
        import ray

        return ray.get(self.actor.drain.remote(), timeout=DRAIN_TIMEOUT_S)

    def request_stop(self) -> None:
        self.actor.request_stop.remote()


def progress_actor() -> Any:
    """Start a ProgressChannel actor: tiny, CPU-free, so it never competes with workers.

    Pinned to the driver's own node: left to Ray's scheduler a CPU-free actor may land on a
    worker node, and losing that worker pod would then take the driver's progress with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    on_driver_node = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(num_cpus=0, max_concurrency=4, scheduling_strategy=on_driver_node)(ProgressChannel).remote()
