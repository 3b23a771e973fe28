"""Error types for resource loading and validation."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem found in one document of a YAML file.

    ``document`` is the 1-based index of the document in a multi-document file
    (0 for a problem with the input as a whole, such as its size),
    ``name`` is ``namespace/name`` (or ``""`` when it could not be determined) and
    ``path`` is a YAML-style field path such as ``spec.http[0].route[1].weight``.
    """

    file: str
    document: int
    kind: str
    name: str
    path: str
    reason: str

    def __str__(self) -> str:
        what = " ".join(part for part in (self.kind, self.name) if part)
        where = f"{self.file}: document {self.document}" if self.document else self.file
        if what:
            where += f" ({what})"
        if self.path:
            return f"{where}: {self.path}: {self.reason}"
        return f"{where}: {self.reason}"


class ValidationFailed(Exception):
    """Raised when one or more documents are invalid; holds every error found."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)
