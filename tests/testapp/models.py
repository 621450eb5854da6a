"""Models whose instance methods are task functions: integer, UUID and string primary keys."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models

from tests.testapp.sisy_modules import record


class Counter(models.Model):
    name = models.CharField(max_length=50)

    def __str__(self) -> str:
        return self.name

    def tick(self, message: dict[str, Any]) -> None:
        record("method", f"counter:{self.pk}:{self.name}")


class Gadget(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    name = models.CharField(max_length=50)

    def __str__(self) -> str:
        return self.name

    def greet(self, message: dict[str, Any]) -> str:
        record("method", f"gadget:{self.pk}:{self.name}")
        return f"hello from {self.name}"

    @classmethod
    def nightly(cls, message: dict[str, Any]) -> None:
        record("runs", f"classmethod:{cls.__name__}")

    @staticmethod
    def cleanup(message: dict[str, Any]) -> None:
        record("runs", "staticmethod")

    def wrong(self, data: Any) -> None:  # not named `message`
        pass


class Shelf(models.Model):
    code = models.CharField(primary_key=True, max_length=20)

    def __str__(self) -> str:
        return self.code

    def count(self, message: dict[str, Any]) -> None:
        record("method", f"shelf:{self.pk}")
