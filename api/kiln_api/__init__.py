"""Kiln's API: the TrainingJob models shared by the operator, the trainer and the CLI."""

from .base import API_GROUP, API_VERSION, GROUP_VERSION, KIND, PLURAL
from .job import ObjectMeta, TrainingJob
from .spec import TrainingJobSpec
from .status import Condition, Phase, TrainingJobStatus

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "GROUP_VERSION",
    "KIND",
    "PLURAL",
    "Condition",
    "ObjectMeta",
    "Phase",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
]
