"""Shared pydantic configuration for every Kiln API model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

API_GROUP = "kiln.dev"
API_VERSION = "v1alpha1"
GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
SINGULAR = "trainingjob"
SHORT_NAMES = ["tj"]
CATEGORIES = ["kiln"]


class ApiModel(BaseModel):
    """Base for API objects: camelCase on the wire, unknown fields rejected.

    `populate_by_name` lets Python code build models with snake_case names while
    manifests always use the camelCase aliases.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        json_schema_extra=lambda schema, cls: _add_cel_rules(schema, cls),
    )

    cross_field_rules: ClassVar[tuple[CrossFieldRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cross_field_rules(self) -> ApiModel:
        for rule in self.cross_field_rules:
            if not rule.check(self):
                raise PydanticCustomError(
                    "cross_field",
                    "{message}",
                    {"message": rule.message, "field_path": rule.field_path or ""},
                )
        return self

    def to_api(self) -> dict:
        """Serialise as it appears in a manifest: camelCase, unset optionals dropped."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class CrossFieldRule:
    """A rule spanning several fields, enforced by pydantic *and* by the CRD.

    `cel` becomes an `x-kubernetes-validations` entry on the model's schema, so the
    API server enforces it; `check` is the same rule in Python for `kiln validate`,
    the operator and `kiln run`. The shared test corpus keeps the two in agreement.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def to_crd(self) -> dict[str, str]:
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


def _add_cel_rules(schema: dict[str, Any], cls: type) -> None:
    rules = getattr(cls, "cross_field_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [rule.to_crd() for rule in rules]
