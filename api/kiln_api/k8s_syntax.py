"""Kubernetes syntax of the places Kiln's strings end up: label keys and values, DNS names, images.

Each rule exists three times, and all three must read it alike:

- as a JSON-schema `pattern`/`maxLength` in the pydantic models (pydantic checks patterns with
  Rust's `regex`), which becomes `pattern`/`maxLength` in the CRD (the API server uses Go's RE2);
- in the CRD validator (`validation.py`, Python's `re`);
- as CEL `matches()` where the schema cannot say it (map keys, a label key's prefix length).

So patterns use only what the three engines share: no lookaround or backreferences, explicit
ASCII classes (`\\d`, `\\w`, `\\s` are Unicode-aware in Rust and Python but ASCII in Go), anchors
`^...$` (Python's `$` also matches before a final newline; `validation.py` reads it as `\\Z`).

Lengths are in characters (code points), as `maxLength` counts them; every pattern here is
ASCII-only, so characters are bytes where Kubernetes counts bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated

from pydantic import AfterValidator, StringConstraints

DNS_LABEL_MAX_LENGTH = 63
DNS_SUBDOMAIN_MAX_LENGTH = 253
LABEL_NAME_MAX_LENGTH = 63
LABEL_VALUE_MAX_LENGTH = 63
LABEL_PREFIX_MAX_LENGTH = DNS_SUBDOMAIN_MAX_LENGTH
QUALIFIED_NAME_MAX_LENGTH = LABEL_PREFIX_MAX_LENGTH + 1 + LABEL_NAME_MAX_LENGTH
# apimachinery's TotalAnnotationSizeLimitB: the sum of len(key) + len(value), in bytes.
ANNOTATIONS_MAX_BYTES = 256 * 1024
# Linux's MAX_ARG_STRLEN: one "NAME=value" environment string handed to exec. A longer one
# makes the container fail to start (E2BIG), although the API server accepts the pod.
ENV_STRING_MAX_BYTES = 128 * 1024

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = rf"{_DNS_LABEL}(\.{_DNS_LABEL})*"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"

DNS_LABEL_PATTERN = rf"^{_DNS_LABEL}$"
DNS_SUBDOMAIN_PATTERN = rf"^{_DNS_SUBDOMAIN}$"
# A label key / annotation key / toleration key: `[prefix/]name`, prefix a DNS subdomain of at
# most 253 characters (checked by LABEL_PREFIX_LENGTH_PATTERN), name at most 63.
QUALIFIED_NAME_PATTERN = rf"^({_DNS_SUBDOMAIN}/)?{_LABEL_NAME}$"
LABEL_PREFIX_LENGTH_PATTERN = rf"^([^/]{{0,{LABEL_PREFIX_MAX_LENGTH}}}/)?[^/]*$"
LABEL_VALUE_PATTERN = rf"^({_LABEL_NAME})?$"

# An image reference as the container runtime parses it (github.com/distribution/reference,
# normalized as CRI runtimes do): [registry[:port]/]path[:tag][@digest]. The first component is
# a registry only if it has a '.' or a port or is `localhost`; otherwise it is part of the path,
# which is lowercase. The repository name (registry and path) has at most 255 characters
# (IMAGE_NAME_LENGTH_PATTERN).
_IMAGE_DOMAIN_LABEL = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?"
_IMAGE_DOMAIN = rf"(localhost(:[0-9]{{1,5}})?|{_IMAGE_DOMAIN_LABEL}(\.{_IMAGE_DOMAIN_LABEL})+(:[0-9]{{1,5}})?|{_IMAGE_DOMAIN_LABEL}:[0-9]{{1,5}})"
_IMAGE_COMPONENT = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
_IMAGE_TAG = r"[A-Za-z0-9_][-A-Za-z0-9_.]{0,127}"
_IMAGE_DIGEST = r"[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_PATTERN = rf"^({_IMAGE_DOMAIN}/)?{_IMAGE_COMPONENT}(/{_IMAGE_COMPONENT})*(:{_IMAGE_TAG})?(@{_IMAGE_DIGEST})?$"
IMAGE_NAME_MAX_LENGTH = 255
# A tag has no '/' or ':', so the name is exactly what precedes the optional tag and digest.
IMAGE_NAME_LENGTH_PATTERN = rf"^[^@]{{0,{IMAGE_NAME_MAX_LENGTH}}}(:{_IMAGE_TAG})?(@.*)?$"
IMAGE_MAX_LENGTH = 512

# Characters no path, column name or URL here may hold: C0 controls (NUL, newline, tab...) and DEL.
CONTROL_CHARACTERS = r"\x00-\x1f\x7f"
NO_CONTROL_CHARACTERS_PATTERN = rf"^[^{CONTROL_CHARACTERS}]*$"

_QUALIFIED_NAME_RE = re.compile(QUALIFIED_NAME_PATTERN.removesuffix("$") + r"\Z")
_IMAGE_NAME_LENGTH_RE = re.compile(IMAGE_NAME_LENGTH_PATTERN.removesuffix("$") + r"\Z")
_LABEL_VALUE_RE = re.compile(LABEL_VALUE_PATTERN.removesuffix("$") + r"\Z")
_DNS_LABEL_RE = re.compile(DNS_LABEL_PATTERN.removesuffix("$") + r"\Z")

QUALIFIED_NAME_HINT = (
    "must be a label key: an optional DNS subdomain prefix of at most 253 characters and '/', then a name of at most "
    "63 characters: alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
)
LABEL_VALUE_HINT = (
    "must be a label value: at most 63 characters, alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
)
DNS_LABEL_HINT = "must be a DNS label: at most 63 lowercase alphanumerics or '-', starting and ending with an alphanumeric"


def qualified_name_problem(key: str) -> str | None:
    """Why `key` is not a label key (apimachinery's IsQualifiedName), or None if it is one."""
    prefix, slash, name = key.rpartition("/")
    if len(name) > LABEL_NAME_MAX_LENGTH:
        return f"name part must be no more than {LABEL_NAME_MAX_LENGTH} characters"
    if slash and len(prefix) > LABEL_PREFIX_MAX_LENGTH:
        return f"prefix part must be no more than {LABEL_PREFIX_MAX_LENGTH} characters"
    if not _QUALIFIED_NAME_RE.match(key):
        return QUALIFIED_NAME_HINT
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > LABEL_VALUE_MAX_LENGTH:
        return f"must be no more than {LABEL_VALUE_MAX_LENGTH} characters"
    if not _LABEL_VALUE_RE.match(value):
        return LABEL_VALUE_HINT
    return None


def dns_label_problem(value: str) -> str | None:
    if len(value) > DNS_LABEL_MAX_LENGTH:
        return f"must be no more than {DNS_LABEL_MAX_LENGTH} characters"
    if not _DNS_LABEL_RE.match(value):
        return DNS_LABEL_HINT
    return None


def image_problem(image: str) -> str | None:
    """What IMAGE_PATTERN cannot say: the repository name's own length limit."""
    if not _IMAGE_NAME_LENGTH_RE.match(image):
        return f"the repository name (before the tag and digest) must be no more than {IMAGE_NAME_MAX_LENGTH} characters"
    return None


def annotations_size(annotations: Mapping[str, str]) -> int:
    """Bytes the API server counts against ANNOTATIONS_MAX_BYTES."""
    return sum(len(str(k).encode("utf-8", "surrogatepass")) + len(str(v).encode("utf-8", "surrogatepass")) for k, v in annotations.items())


def cel_string(pattern: str) -> str:
    """`pattern` as a CEL string literal (raw, so backslashes pass through unchanged)."""
    if "'" in pattern:
        raise ValueError(f"pattern {pattern!r} cannot be a raw single-quoted CEL string")
    return f"r'{pattern}'"


def label_key_cel(variable: str) -> str:
    """CEL that holds when `variable` is a label key (its syntax and its prefix's length)."""
    return (
        f"{variable}.size() <= {QUALIFIED_NAME_MAX_LENGTH} && {variable}.matches({cel_string(QUALIFIED_NAME_PATTERN)})"
        f" && {variable}.matches({cel_string(LABEL_PREFIX_LENGTH_PATTERN)})"
    )


# --------------------------------------------------------------------------- pydantic types


def _label_key(value: str) -> str:
    problem = qualified_name_problem(value) if value else None
    if problem is not None:
        raise ValueError(problem)
    return value


def _annotation_key(value: str) -> str:
    # The API server checks annotation keys lowercased: upper case is allowed in the prefix.
    problem = qualified_name_problem(value.lower())
    if problem is not None:
        raise ValueError(problem)
    return value


# The pattern and length catch almost everything; the validator adds the prefix's own length.
LabelKey = Annotated[
    str,
    StringConstraints(max_length=QUALIFIED_NAME_MAX_LENGTH, pattern=QUALIFIED_NAME_PATTERN),
    AfterValidator(_label_key),
]
OptionalLabelKey = Annotated[  # a toleration's key: empty matches every taint
    str,
    StringConstraints(max_length=QUALIFIED_NAME_MAX_LENGTH, pattern="^(" + QUALIFIED_NAME_PATTERN[1:-1] + ")?$"),
    AfterValidator(_label_key),
]
LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_MAX_LENGTH, pattern=LABEL_VALUE_PATTERN)]
def _image(value: str) -> str:
    problem = image_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


Image = Annotated[str, StringConstraints(min_length=1, max_length=IMAGE_MAX_LENGTH, pattern=IMAGE_PATTERN), AfterValidator(_image)]
AnnotationKey = Annotated[str, StringConstraints(max_length=QUALIFIED_NAME_MAX_LENGTH), AfterValidator(_annotation_key)]
DnsLabel = Annotated[str, StringConstraints(max_length=DNS_LABEL_MAX_LENGTH, pattern=DNS_LABEL_PATTERN)]

# The CRD cannot constrain map keys with a schema (structural schemas have no propertyNames): CEL does.
LABEL_MAP_KEYS_RULE = {"rule": f"self.all(k, {label_key_cel('k')})", "message": f"every key {QUALIFIED_NAME_HINT}"}
# ...nor bound the prefix of a label key separately from the whole.
LABEL_KEY_PREFIX_RULE = {
    "rule": f"self.matches({cel_string(LABEL_PREFIX_LENGTH_PATTERN)})",
    "message": f"prefix part must be no more than {LABEL_PREFIX_MAX_LENGTH} characters",
}
IMAGE_NAME_LENGTH_RULE = {
    "rule": f"self.matches({cel_string(IMAGE_NAME_LENGTH_PATTERN)})",
    "message": f"the repository name (before the tag and digest) must be no more than {IMAGE_NAME_MAX_LENGTH} characters",
}
