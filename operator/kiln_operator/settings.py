"""Operator settings: one frozen value passed to every pure function.

`from_env` reads `KILN_*` environment variables; the shell layers command-line flags on
top (`dataclasses.replace`). Bad values raise `SettingsError` naming the variable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from kiln_api.storage_paths import PVC_SCHEME, is_pvc, split_pvc


class SettingsError(ValueError):
    """A setting has a value the operator cannot use."""


@dataclass(frozen=True)
class OperatorSettings:
    namespaces: tuple[str, ...] = ()  # empty = cluster-wide
    trainer_image: str = "ghcr.io/kiln-dev/kiln-trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    timer_interval_seconds: float = 10.0
    metrics_port: int = 8080
    health_port: int = 8081
    operator_namespace: str = "kiln-system"
    prometheus_namespace: str = "monitoring"  # NetworkPolicy: who may scrape the driver
    dns_namespace: str = "kube-system"  # NetworkPolicy: the only DNS servers the job's pods may reach ...
    dns_pod_labels: tuple[tuple[str, str], ...] = (("k8s-app", "kube-dns"),)  # ... the pods with these labels there
    default_checkpoint_storage: str | None = None  # jobs without spec.checkpoint.storage use it, or are refused
    status_unreachable_seconds: float = 120.0  # head's /status unreachable this long while Running => head lost
    restart_backoff_seconds: float = 10.0  # doubled per restart, capped
    restart_backoff_max_seconds: float = 300.0
    kubernetes_version: str = "1.30"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorSettings:
        """Build settings from `KILN_<FIELD_NAME_UPPER>` variables; unset ones keep their default."""
        values: dict[str, Any] = {}
        for field in fields(cls):
            var = ENV_PREFIX + field.name.upper()
            raw = environ.get(var)
            if raw is None or raw == "":
                continue
            values[field.name] = parse_setting(field.name, raw, var)
        return cls(**values)

    def backoff_seconds(self, restarts: int) -> float:
        """Wait before recreating the cluster after the `restarts`-th head loss."""
        if restarts <= 0:
            return 0.0
        # Cap the exponent too: 2**1000 is fine for ints, but floats overflow.
        return min(self.restart_backoff_seconds * 2 ** min(restarts - 1, 64), self.restart_backoff_max_seconds)


ENV_PREFIX = "KILN_"
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")


def _namespaces(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _labels(raw: str) -> tuple[tuple[str, str], ...]:
    """`k=v,k2=v2` -> sorted ((k, v), (k2, v2)); at least one label, keys and values as Kubernetes allows."""
    pairs: dict[str, str] = {}
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise ValueError(f"{part!r} is not a label key=value")
        pairs[key] = value
    if not pairs:
        raise ValueError("must name at least one label key=value")
    return tuple(sorted(pairs.items()))


def _namespace(raw: str) -> str:
    if not _DNS_LABEL.fullmatch(raw):
        raise ValueError("must be a namespace name (lowercase letters, digits and '-', at most 63)")
    return raw


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("must be an integer") from None
    if not 1 <= value <= 65535:
        raise ValueError("must be a port number between 1 and 65535")
    return value


def _pull_policy(raw: str) -> str:
    if raw not in _PULL_POLICIES:
        raise ValueError(f"must be one of {', '.join(_PULL_POLICIES)}")
    return raw


def _storage(raw: str) -> str:
    if not raw.startswith((PVC_SCHEME, "s3://")):
        raise ValueError("must be shared storage: a pvc://claim/path or s3://bucket/prefix URL")
    if is_pvc(raw):
        split_pvc(raw)  # a claim name is required: every job's pods would mount it
    return raw


_PARSERS: dict[str, Callable[[str], Any]] = {
    "namespaces": _namespaces,
    "dns_namespace": _namespace,
    "dns_pod_labels": _labels,
    "image_pull_policy": _pull_policy,
    "timer_interval_seconds": _positive_float,
    "metrics_port": _port,
    "health_port": _port,
    "default_checkpoint_storage": _storage,
    "status_unreachable_seconds": _positive_float,
    "restart_backoff_seconds": _positive_float,
    "restart_backoff_max_seconds": _positive_float,
}


def parse_setting(name: str, raw: str, source: str | None = None) -> Any:
    """Parse one setting from its string form; errors name the variable (or flag) and the reason."""
    parser = _PARSERS.get(name, str)
    try:
        return parser(raw.strip())
    except ValueError as exc:
        raise SettingsError(f"{source or name}: invalid value {raw!r}: {exc}") from None
