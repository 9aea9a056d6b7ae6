"""Loading Kubernetes manifests from YAML: every problem becomes a message, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class _ManifestLoader(yaml.SafeLoader):
    """SafeLoader that reads YAML the way `kubectl` does for our purposes.

    Timestamps stay strings (the API server stores RFC 3339 strings, and a `datetime`
    would fail `type: string`), and duplicate keys are an error instead of the last one
    silently winning.
    """


_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _ManifestLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_ManifestLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass(frozen=True)
class Document:
    """One YAML document of a file: `obj` when it is a mapping, else `error` says why not."""

    index: int  # 1-based position among the file's documents
    obj: dict[str, Any] | None = None
    error: str | None = None


def _yaml_error_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    text = f"{context}: {problem}" if context else str(problem)
    if mark is not None:
        return f"YAML syntax error at line {mark.line + 1}, column {mark.column + 1}: {text}"
    return f"YAML syntax error: {text}"


def parse_documents(text: str) -> list[Document]:
    """Split a YAML stream into documents; empty documents (`---` alone) are skipped.

    A syntax error ends the stream: the documents before it are kept, the error becomes
    the last entry. A stream with no document at all yields one `Document` with an error.
    """
    documents: list[Document] = []
    position = 0
    try:
        for data in yaml.load_all(text, Loader=_ManifestLoader):
            if data is None:
                continue
            position += 1
            if isinstance(data, dict):
                documents.append(Document(position, obj=data))
            else:
                documents.append(Document(position, error=f"not a mapping (got {_yaml_type(data)})"))
    except yaml.YAMLError as exc:
        documents.append(Document(position + 1, error=_yaml_error_message(exc)))
    if not documents:
        documents.append(Document(1, error="empty file: no YAML document"))
    return documents


def _yaml_type(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def load_file(path: str | Path) -> list[Document]:
    """Read and parse a manifest file; unreadable files give one error document."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return [Document(1, error="no such file")]
    except IsADirectoryError:
        return [Document(1, error="is a directory, not a file")]
    except (OSError, UnicodeDecodeError) as exc:
        return [Document(1, error=f"cannot read: {exc}")]
    return parse_documents(text)
