"""`kiln operator`: flags and environment -> settings -> kopf, metrics and health endpoints.

Settings come from `KILN_*` environment variables (`OperatorSettings.from_env`); flags given
on the command line override them.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import logging
import os
import random
import sys
from collections.abc import Sequence
from typing import Any

import kopf
from kiln_api import API_GROUP
from kubernetes import client as k8s_client

from .caches import CachingKube, OperatorCaches
from .handlers import Runtime, on_watch_event, register
from .kube import load_configuration
from .metrics import OperatorMetrics
from .settings import OperatorSettings, SettingsError, parse_setting

log = logging.getLogger("kiln.operator")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln operator", description="Run the Kiln operator (kopf) against a cluster.")
    parser.add_argument("--namespace", action="append", default=None, help="namespace to watch (repeatable; none = cluster-wide)")
    parser.add_argument("--trainer-image", help="default trainer image for jobs without spec.image")
    parser.add_argument("--timer-interval", help="seconds between periodic reconciles of each job")
    parser.add_argument("--metrics-port", help="port of the operator's /metrics (default 8080)")
    parser.add_argument("--health-port", help="port of the liveness endpoint /healthz (default 8081)")
    parser.add_argument("--default-checkpoint-storage", help="pvc:// or s3:// URL for jobs without checkpoint.storage")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then $KUBECONFIG or ~/.kube/config); "
                        "KILN_KUBECONFIG")
    parser.add_argument("--peering", metavar="NAME", help="kopf peering object for HA (default: standalone); KILN_PEERING")
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority; the highest-priority replica works, the others stand by "
                             "(default with --peering: random, so that replicas never tie); KILN_PRIORITY")
    parser.add_argument("--verbose", action="store_true", help="debug logging; KILN_VERBOSE=true")
    return parser


FLAG_SETTINGS = {
    "trainer_image": "trainer_image",
    "timer_interval": "timer_interval_seconds",
    "metrics_port": "metrics_port",
    "health_port": "health_port",
    "default_checkpoint_storage": "default_checkpoint_storage",
}


@dataclasses.dataclass(frozen=True)
class ProcessFlags:
    """Flags about this process rather than the reconcile settings; each has a `KILN_*` variable."""

    kubeconfig: str | None = None
    peering: str | None = None
    priority: int | None = None
    verbose: bool = False


TRUE_WORDS = ("1", "true", "yes", "on")


def process_flags(args: argparse.Namespace, environ: dict[str, str]) -> ProcessFlags:
    """`--kubeconfig`, `--peering`, `--priority`, `--verbose`, or KILN_KUBECONFIG, KILN_PEERING,
    KILN_PRIORITY, KILN_VERBOSE (a flag wins); raises SettingsError naming a bad variable."""
    priority = args.priority
    raw_priority = environ.get("KILN_PRIORITY", "").strip()
    if priority is None and raw_priority:
        try:
            priority = int(raw_priority)
        except ValueError:
            raise SettingsError(f"KILN_PRIORITY: not an integer: {raw_priority!r}") from None
    return ProcessFlags(
        kubeconfig=args.kubeconfig or environ.get("KILN_KUBECONFIG") or None,
        peering=args.peering or environ.get("KILN_PEERING") or None,
        priority=priority,
        verbose=args.verbose or environ.get("KILN_VERBOSE", "").strip().lower() in TRUE_WORDS,
    )


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> OperatorSettings:
    """Environment first, flags on top; raises SettingsError naming the flag or variable."""
    settings = OperatorSettings.from_env(environ)
    changes: dict[str, Any] = {}
    for flag, name in FLAG_SETTINGS.items():
        raw = getattr(args, flag)
        if raw is not None:
            changes[name] = parse_setting(name, str(raw), "--" + flag.replace("_", "-"))
    if args.namespace:
        changes["namespaces"] = tuple(dict.fromkeys(ns.strip() for ns in args.namespace if ns.strip()))
    return dataclasses.replace(settings, **changes)


def kopf_settings(settings: OperatorSettings) -> kopf.OperatorSettings:
    config = kopf.OperatorSettings()
    # kopf's bookkeeping goes to annotations: status belongs to Kiln alone.
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    config.persistence.diffbase_storage = NoDiffBase()
    config.persistence.finalizer = f"{API_GROUP}/operator"
    # Namespaces are given exactly; no cluster-wide discovery (and no RBAC for it) is needed.
    config.scanning.disabled = True
    config.posting.level = logging.WARNING
    config.watching.server_timeout = 300
    config.watching.client_timeout = 330
    config.networking.request_timeout = 30
    # Per-object workers exit after 1 s idle instead of 5 s: shutdown (and HA hand-over) waits for them.
    queueing = getattr(config, "queueing", None) or config.batching  # renamed in kopf 1.40
    queueing.idle_timeout = 1.0
    # Deleting a job waits for its loop to exit; a loop caught mid-reconcile is re-checked after
    # this many seconds (kopf's default, 60 s, would hold the job's finalizer that long).
    config.background.cancellation_polling = 1.0
    return config


class NoDiffBase(kopf.DiffBaseStorage):
    """No diff base: kopf builds one from every event it processes (a deep copy of the body) for
    change handlers to compare, and the operator registers none (its informers wake the loops)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def connection_info(configuration: k8s_client.Configuration) -> kopf.ConnectionInfo:
    """The same credentials the REST client uses, in kopf's form."""
    token = configuration.get_api_key_with_prefix("authorization") or ""
    scheme, _, value = token.partition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=value or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def build_registry(runtime: Runtime, kubeconfig: str | None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    register(registry, runtime)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # Reloaded on every login, so rotated service-account tokens are picked up.
        return connection_info(load_configuration(kubeconfig))

    return registry


async def serve(settings: OperatorSettings, kubeconfig: str | None, *, peering: str | None = None,
                priority: int | None = None, stop_flag: Any = None, ready_flag: Any = None, metrics: OperatorMetrics | None = None,
                liveness: bool = True) -> None:
    """Run the operator until `stop_flag` is set (used by `kiln operator` and the tests)."""
    kube = CachingKube(load_configuration(kubeconfig))
    kube.caches = OperatorCaches(kube, settings.namespaces).start()
    runtime = Runtime(settings=settings, kube=kube, metrics=metrics or OperatorMetrics())
    kube.caches.listen(lambda event_type, obj: on_watch_event(runtime, event_type, obj))
    namespaces = list(settings.namespaces)
    config = kopf_settings(settings)
    try:
        await _run_kopf(runtime, config, kubeconfig, namespaces, (peering, priority), stop_flag, ready_flag, liveness)
    finally:
        kube.caches.stop()
        # Each kopf settings object brings its own thread pool; release both with the operator.
        config.execution.executor.shutdown(wait=False, cancel_futures=True)
        runtime.executor.shutdown(wait=False, cancel_futures=True)


async def _run_kopf(runtime: Runtime, config: kopf.OperatorSettings, kubeconfig: str | None, namespaces: list[str],
                    peering_and_priority: tuple[str | None, int | None], stop_flag: Any, ready_flag: Any,
                    liveness: bool) -> None:
    settings = runtime.settings
    peering, priority = peering_and_priority
    if peering is not None and priority is None:
        # kopf pauses every peer whose priority equals its own, so identical replicas would all
        # stand by; a random priority elects one active replica and leaves the rest as standbys.
        priority = random.SystemRandom().randint(1, 2**31 - 1)
    await kopf.operator(
        registry=build_registry(runtime, kubeconfig),
        settings=config,
        standalone=peering is None,
        peering_name=peering,
        priority=priority,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz" if liveness else None,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas before the operator starts its threads; False where not glibc.

    glibc gives threads that allocate at once arenas of their own, up to 8 per core, and memory
    freed in one is not reused by another: with kopf's and the reconciles' ~50 threads the
    operator held 273 MiB at 1,000 jobs in one run, 194-260 MiB in runs with two arenas
    (bench/operator_load.py; the peak varies with the machine's load more than with this). The
    same as MALLOC_ARENA_MAX=2, without relying on the Deployment's environment.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def run_operator(argv: Sequence[str]) -> int:
    limit_malloc_arenas()
    args = build_parser().parse_args(list(argv))
    try:
        flags = process_flags(args, dict(os.environ))
        settings = settings_from(args, dict(os.environ))
    except SettingsError as exc:
        print(f"kiln operator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if flags.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not flags.verbose:
        # kopf logs the end of every job's loop at INFO ("Daemon 'job_loop' succeeded"), and
        # its start, finalizer and stop at DEBUG: at a thousand jobs, noise. Kiln logs what it
        # does itself; --verbose brings kopf's lines back.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        load_configuration(flags.kubeconfig)  # fail early, with a message, on bad credentials
    except SettingsError as exc:
        print(f"kiln operator: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"kiln operator: cannot load Kubernetes credentials: {exc}", file=sys.stderr)
        return 2
    metrics = OperatorMetrics()
    port = metrics.serve(settings.metrics_port)
    log.info("metrics on :%d/metrics, liveness on :%d/healthz", port, settings.health_port)
    try:
        # No stop flag: kopf itself turns SIGTERM/SIGINT into a graceful stop in the main thread
        # (a threading.Event flag would keep a thread of the default executor waiting forever).
        asyncio.run(serve(settings, flags.kubeconfig, peering=flags.peering, priority=flags.priority, metrics=metrics))
    except KeyboardInterrupt:
        pass
    finally:
        metrics.close()
    return 0
