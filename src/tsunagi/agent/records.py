"""``NamedTuple`` for the agent's records, without importing ``typing``.

``typing`` costs every sidecar 0.4 MB of private memory (measured), and the agent needs it
only for ``class Options(NamedTuple): ...``. Type checkers see ``typing.NamedTuple`` itself;
at run time the same class statement builds a ``collections.namedtuple`` with the annotated
fields in order, their defaults, and the class body's docstring and methods.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import NamedTuple as NamedTuple
else:
    _NOT_COPIED = frozenset({"__module__", "__qualname__", "__dict__", "__weakref__"})

    class _RecordType(type):
        def __new__(mcls, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, name, bases, namespace)
            annotations = namespace.get("__annotations__", {})
            fields = list(annotations)
            with_default = [f for f in fields if f in namespace]
            if with_default != fields[len(fields) - len(with_default) :]:
                raise TypeError(f"{name}: a field without a default follows one with a default")
            record = namedtuple(
                name,
                fields,
                defaults=[namespace[f] for f in with_default],
                module=namespace.get("__module__"),
            )
            for key, value in namespace.items():
                if key not in _NOT_COPIED and key not in annotations:
                    setattr(record, key, value)
            record.__qualname__ = namespace.get("__qualname__", name)
            return record

    class NamedTuple(metaclass=_RecordType):
        """Base of the agent's records: see this module's docstring."""
