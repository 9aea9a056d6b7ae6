"""Loading Kubernetes manifests from YAML: every problem becomes a message, never a traceback.

Hostile YAML is refused quickly, before anything walks the data:

- files over MAX_FILE_BYTES (a TrainingJob is a few kilobytes; the API server takes 3 MiB);
- documents nested deeper than MAX_DEPTH (the composer recurses: a 5,000-deep list would
  end in RecursionError);
- documents whose aliases expand to more than MAX_NODES values or MAX_SCALAR_CHARACTERS
  characters ("billion laughs": 600 bytes that expand to a billion strings). Aliases as
  such are fine, as in Kubernetes; every later step (validation, rendering) walks the
  expanded tree, so the expanded size is what is budgeted;
- numbers spelled with more than MAX_NUMBER_CHARACTERS characters (Python refuses to parse
  integers of more than 4,300 digits; a base-60 integer costs quadratic time; Kubernetes'
  integers are 64-bit anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 100
MAX_NODES = 10_000  # values (scalars, lists, maps) of one document, aliases expanded
MAX_SCALAR_CHARACTERS = MAX_FILE_BYTES  # characters of one document's scalars, aliases expanded
MAX_NUMBER_CHARACTERS = 100


class ManifestLimitError(yaml.MarkedYAMLError):
    """A document that is well-formed YAML but beyond what a manifest may be."""


class _ManifestLoader(yaml.SafeLoader):
    """SafeLoader that reads YAML the way `kubectl` does for our purposes.

    Timestamps stay strings (the API server stores RFC 3339 strings, and a `datetime`
    would fail `type: string`), and duplicate keys are an error instead of the last one
    silently winning. Composition enforces the module's depth and size limits.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0
        # id(node) -> (values, depth, scalar characters) of its expanded subtree. Nodes stay
        # alive while their document is composed, so ids are not reused meanwhile.
        self._sizes: dict[int, tuple[int, int, int]] = {}

    def compose_document(self) -> Any:
        self._depth, self._sizes = 0, {}
        try:
            return super().compose_document()
        finally:
            self._sizes = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self._depth >= MAX_DEPTH:
            raise ManifestLimitError(problem=f"nested more than {MAX_DEPTH} levels deep", problem_mark=self.peek_event().start_mark)
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if not alias:
            self._measure(node)
        elif id(node) not in self._sizes:  # aliases name nodes measured where they were anchored...
            raise ManifestLimitError(problem="a YAML alias refers to a node that contains it (a cycle)", problem_mark=node.start_mark)
        return node

    def _measure(self, node: yaml.Node) -> None:
        if isinstance(node, yaml.ScalarNode):
            values, depth, characters = 1, 1, len(node.value)
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else [part for pair in node.value for part in pair]
            values, depth, characters = 1, 0, 0
            for child in children:
                child_values, child_depth, child_characters = self._sizes[id(child)]
                values += child_values
                characters += child_characters
                depth = max(depth, child_depth)
            depth += 1
        self._sizes[id(node)] = (values, depth, characters)
        problem = None
        if values > MAX_NODES:
            problem = f"the document expands to more than {MAX_NODES} values (through YAML aliases?)"
        elif characters > MAX_SCALAR_CHARACTERS:
            problem = f"the document expands to more than {MAX_SCALAR_CHARACTERS} characters of text (through YAML aliases?)"
        elif depth > MAX_DEPTH:
            problem = f"the document nests more than {MAX_DEPTH} levels deep (through YAML aliases)"
        if problem is not None:
            raise ManifestLimitError(problem=problem, problem_mark=node.start_mark)


_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: _ManifestLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a map key must be a string, not {_yaml_type(key)}", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


def _number_constructor(tag: str) -> Any:
    base = yaml.SafeLoader.yaml_constructors[tag]

    def construct(loader: _ManifestLoader, node: yaml.ScalarNode) -> Any:
        if len(node.value) > MAX_NUMBER_CHARACTERS:
            raise ManifestLimitError(
                problem=f"a number of {len(node.value)} characters (at most {MAX_NUMBER_CHARACTERS}: Kubernetes numbers are 64-bit)",
                problem_mark=node.start_mark,
            )
        try:
            return base(loader, node)
        except ValueError as exc:
            raise yaml.constructor.ConstructorError(None, None, f"not a number: {exc}", node.start_mark) from None

    return construct


_ManifestLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
for _tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float"):
    _ManifestLoader.add_constructor(_tag, _number_constructor(_tag))


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
    kind = "YAML refused" if isinstance(exc, ManifestLimitError) else "YAML syntax error"
    if mark is not None:
        return f"{kind} at line {mark.line + 1}, column {mark.column + 1}: {text}"
    return f"{kind}: {text}"


def _too_large(size: int) -> str:
    return f"too large: more than {MAX_FILE_BYTES} bytes (a TrainingJob manifest is a few kilobytes){'' if size < 0 else f', {size} bytes'}"


def parse_documents(text: str) -> list[Document]:
    """Split a YAML stream into documents; empty documents (`---` alone) are skipped.

    A syntax error ends the stream: the documents before it are kept, the error becomes
    the last entry. A stream with no document at all yields one `Document` with an error.
    """
    if len(text) > MAX_FILE_BYTES:
        return [Document(1, error=_too_large(-1))]
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


def read_limited(stream: Any) -> Any:
    """At most one more than MAX_FILE_BYTES from a file object, so that `parse_documents`
    can tell an over-large input without reading all of it (`/dev/zero` never ends)."""
    return stream.read(MAX_FILE_BYTES + 1)


def load_file(path: str | Path) -> list[Document]:
    """Read and parse a manifest file; unreadable files give one error document."""
    try:
        with open(path, "rb") as stream:
            data = read_limited(stream)
        if len(data) > MAX_FILE_BYTES:
            size = Path(path).stat().st_size
            return [Document(1, error=_too_large(size if size > MAX_FILE_BYTES else -1))]
        text = data.decode("utf-8")
    except FileNotFoundError:
        return [Document(1, error="no such file")]
    except IsADirectoryError:
        return [Document(1, error="is a directory, not a file")]
    except (OSError, UnicodeDecodeError) as exc:
        return [Document(1, error=f"cannot read: {exc}")]
    return parse_documents(text)
