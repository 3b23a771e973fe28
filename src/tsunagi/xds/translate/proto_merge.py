"""Protobuf merge as Istio's EnvoyFilter MERGE does it (and copying, for patches).

Plain protobuf merge semantics (set scalars overwrite, messages merge field by field, lists
append, map entries are replaced), except that a ``Duration`` is replaced rather than merged
(Istio's fix for "1.5s merged with 10s is 10.5s"). :func:`merge_any` merges two ``Any``
messages of the same type by their contents, as Istio does for filter ``typed_config``.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_REPLACED = frozenset({"google.protobuf.Duration"})

M = TypeVar("M", bound=Message)


def copied(message: M) -> M:
    """A deep copy of ``message``, for a patch to change without touching the original."""
    out: M = type(message)()
    out.CopyFrom(message)
    return out


def merge(dst: Message, src: Message) -> None:
    """Merge ``src`` into ``dst`` (same message type), in place."""
    if dst.DESCRIPTOR.full_name != src.DESCRIPTOR.full_name:
        raise TypeError(f"cannot merge {src.DESCRIPTOR.full_name} into {dst.DESCRIPTOR.full_name}")
    for fd, value in src.ListFields():
        target = getattr(dst, fd.name)
        if fd.is_repeated:
            mt = fd.message_type
            if mt is not None and mt.GetOptions().map_entry:
                vfd = mt.fields_by_name["value"]
                for k, v in value.items():
                    if vfd.type == FieldDescriptor.TYPE_MESSAGE:
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            else:
                target.extend(value)
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            if fd.message_type.full_name in _REPLACED:
                target.CopyFrom(value)
            else:
                target.SetInParent()  # an empty message in src still selects its oneof
                merge(target, value)
        else:
            setattr(dst, fd.name, value)


def _unpack(body: any_pb2.Any) -> Message:
    """The message inside ``body`` (its type must be registered)."""
    name = body.type_url.rsplit("/", 1)[-1]
    descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
    message: Message = message_factory.GetMessageClass(descriptor)()
    if not body.Unpack(message):
        raise TypeError(f"cannot unpack {body.type_url}")
    return message


def merge_any(dst: any_pb2.Any, src: any_pb2.Any) -> None:
    """Merge the message in ``src`` into the one in ``dst``. As Istio, ``src`` is read as
    ``dst``'s type (a patch may name another version of it)."""
    inner = _unpack(dst)
    patch = type(inner)()
    patch.ParseFromString(src.value)
    merge(inner, patch)
    dst.Pack(inner)
