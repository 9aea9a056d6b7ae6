"""CPU amounts as Kubernetes users write them: `2`, `"2"`, `"1.5"`, `"500m"`.

`workers.cpusPerWorker` and `head.cpus` are int-or-string quantities, as a pod's `cpu` request
is. The spec keeps the value as given (`6` stays `6`, `"500m"` stays `"500m"`); everything that
needs the amount asks this module:

- `cpu_cores(value)`: the cores as a float (Ray Train's per-worker CPU share);
- `cpu_millicores(value)`: exact whole millicores;
- `cpu_quantity_text(value)`: the canonical Kubernetes quantity (`"1500m"`, `"6"`), for a pod's
  `resources.requests.cpu`, exactly what the API server would store there;
- `ray_cpus(value)`: `ray start --num-cpus`, an integer: the cores rounded up, at least 1.

The accepted forms, identical in pydantic (`CpuQuantity`) and in the CRD:

- an integer number of cores, 1 to 512 (a JSON/YAML number; `2.0` counts as `2`, as it does
  once kubectl has turned the YAML into JSON);
- a string of cores with at most three decimals (`"1.5"`, `"0.25"`), or of whole millicores
  (`"500m"`), more than 0 and at most 512 cores.

A number with a fraction (YAML `1.5`) is refused: the API server checks an int-or-string field's
type (integer or string) before anything else, so a cluster refuses it, and the local checks
refuse it too rather than accept a manifest the cluster would not. Other quantity suffixes
(`k`, `M`, `Ki`, `Gi`...) and exponents only spell amounts of 1000 cores or more, and `u`/`n`
amounts finer than the millicore Kubernetes rounds CPU to, so they are refused as well.

In the CRD the grammar is a `pattern` (no CEL cost; the API server applies it to strings only)
and the range one CEL rule. CEL sees an int-or-string as `dyn` with a size bound of the whole
request (3 MiB), so the rule uses one short regex (to guard `double()`) and otherwise only
`size()`, `startsWith`/`endsWith` and comparisons with short constants: its estimated cost stays
near 2 million, well inside the API server's 10 million per rule.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any, Union

from pydantic import BeforeValidator, WithJsonSchema

MAX_CPU_CORES = 512
CPU_QUANTITY_MAX_LENGTH = 16
# Cores without leading zeros and with at most 3 decimals, or whole millicores.
CPU_QUANTITY_PATTERN = r"^(0|[1-9][0-9]*)(\.[0-9]{1,3}|m)?$"
CPU_RANGE_MESSAGE = f"must be more than 0 and at most {MAX_CPU_CORES} cores ({MAX_CPU_CORES * 1000}m)"
CPU_FORM_MESSAGE = 'must be a CPU quantity: whole cores (2 or "2"), cores with up to 3 decimals ("1.5") or millicores ("500m")'
# Strings it guards are in the pattern's grammar when valid; a malformed one (the pattern reports
# it) must not make `double()` fail, and leading zeros must not fool the size comparison.
_MILLI_LIMIT = f"{MAX_CPU_CORES * 1000}m"
CPU_RANGE_CEL = (
    f"type(self) == string ? (self.endsWith('m') ? self != '0m' && (self.startsWith('0') || size(self) < {len(_MILLI_LIMIT)}"
    f" || (size(self) == {len(_MILLI_LIMIT)} && self <= '{_MILLI_LIMIT}'))"
    f" : !self.matches('^[0-9]+(\\\\.[0-9]+)?$') || (double(self) > 0.0 && double(self) <= {MAX_CPU_CORES}.0))"
    f" : self > 0 && self <= {MAX_CPU_CORES}"
)
CPU_RANGE_RULE = {"rule": CPU_RANGE_CEL, "message": CPU_RANGE_MESSAGE}
FRACTION_MESSAGE = (
    'must be of type integer,string: a number with a fraction is not a Kubernetes int-or-string; '
    'write it as a string ("1.5") or in millicores ("1500m")'
)

_PATTERN = re.compile(CPU_QUANTITY_PATTERN.replace("$", r"\Z"))


def check_cpu_quantity(value: Any) -> int | str:
    """The value as given if it is a valid CPU amount (an integral float becomes an int, as in
    JSON), else ValueError with the reason; pydantic and `kiln validate` share it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("must be of type integer,string")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(FRACTION_MESSAGE)
        value = int(value)
    if isinstance(value, str):
        if len(value) > CPU_QUANTITY_MAX_LENGTH:
            raise ValueError(f"Too long: may not be longer than {CPU_QUANTITY_MAX_LENGTH}")
        if not _PATTERN.match(value):
            raise ValueError(CPU_FORM_MESSAGE)
    if not 0 < cpu_millicores(value) <= MAX_CPU_CORES * 1000:
        raise ValueError(CPU_RANGE_MESSAGE)
    return value


def cpu_millicores(value: int | float | str) -> int:
    """Exact millicores of a CPU amount: 2 -> 2000, "1.5" -> 1500, "500m" -> 500 (sub-millicore
    fractions, which only Python callers can pass, round up as Kubernetes rounds them)."""
    if isinstance(value, str):
        if value.endswith("m"):
            return int(value[:-1])
        return math.ceil(Decimal(value) * 1000)
    if isinstance(value, int):
        return value * 1000
    return math.ceil(Decimal(repr(float(value))) * 1000)


def cpu_cores(value: int | float | str) -> float:
    """Cores as a float: 2 -> 2.0, "500m" -> 0.5."""
    return cpu_millicores(value) / 1000


def cpu_quantity_text(value: int | float | str) -> str:
    """The canonical Kubernetes quantity: whole cores as `"6"`, anything else in millicores
    (`"1500m"`, `"500m"`), which is how the API server stores a pod's `cpu`."""
    millis = cpu_millicores(value)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def ray_cpus(value: int | float | str) -> int:
    """`ray start --num-cpus` takes an integer: the cores rounded up, at least 1."""
    return max(1, math.ceil(cpu_millicores(value) / 1000))


def _check(value: Any) -> Any:
    return check_cpu_quantity(value)


# The CRD schema of such a field (descriptions and defaults come from the Field).
CPU_QUANTITY_SCHEMA: dict[str, Any] = {
    "x-kubernetes-int-or-string": True,
    "maxLength": CPU_QUANTITY_MAX_LENGTH,
    "pattern": CPU_QUANTITY_PATTERN,
    "x-kubernetes-validations": [dict(CPU_RANGE_RULE)],
}

CpuQuantity = Annotated[Union[int, str], BeforeValidator(_check), WithJsonSchema(CPU_QUANTITY_SCHEMA)]
"""A CPU amount as a Kubernetes quantity, kept as given (see the module docstring)."""
