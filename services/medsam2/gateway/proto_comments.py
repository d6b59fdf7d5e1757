"""The proto's comments by full name, read from a descriptor set that protoc wrote with ``--include_source_info``.

``scripts/gen_proto.sh`` runs ``python -m medsam2.gateway.proto_comments DESCRIPTOR_SET OUT.json`` and commits the
JSON beside the stubs (sorted, so it is deterministic and its diff reviewable); the gateway's OpenAPI document
takes its descriptions from it. Keys: ``medsam2.v1.Session`` (a message, enum or service),
``medsam2.v1.Session.session_id`` (a field, enum value or method, by its proto name).
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

from google.protobuf import descriptor_pb2

COMMENTS_FILE = "segmentation_comments.json"
"""The generated comments of ``proto/medsam2/v1/segmentation.proto``, in the stubs' package."""

# Field numbers of the descriptor protos, as source-info paths name them (google/protobuf/descriptor.proto).
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE = 4, 5, 6
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM = 2, 3, 4
_ENUM_VALUE = 2
_SERVICE_METHOD = 2


def comments_of(descriptor_set: bytes) -> dict[str, str]:
    """Every leading (or trailing) comment of the set's files, by the full name of what it documents."""
    found: dict[str, str] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(descriptor_set).file:
        _File(file, found).walk()
    return found


class _File:
    """One file's source-info comments, matched to full names by walking its messages, enums and services."""

    def __init__(self, file: descriptor_pb2.FileDescriptorProto, found: dict[str, str]) -> None:
        self.file = file
        self.found = found
        self.text = {
            tuple(loc.path): (loc.leading_comments or loc.trailing_comments).strip()
            for loc in file.source_code_info.location
        }
        self.prefix = f"{file.package}." if file.package else ""

    def walk(self) -> None:
        for i, proto in enumerate(self.file.message_type):
            self.message(proto, self.prefix + proto.name, (_FILE_MESSAGE, i))
        for i, enum_proto in enumerate(self.file.enum_type):
            self.enum(enum_proto, self.prefix + enum_proto.name, (_FILE_ENUM, i))
        for i, service in enumerate(self.file.service):
            name = self.prefix + service.name
            self.note(name, (_FILE_SERVICE, i))
            for j, method in enumerate(service.method):
                self.note(f"{name}.{method.name}", (_FILE_SERVICE, i, _SERVICE_METHOD, j))

    def note(self, name: str, path: tuple[int, ...]) -> None:
        if self.text.get(path):
            self.found[name] = " ".join(line.strip() for line in self.text[path].splitlines())

    def message(self, proto: descriptor_pb2.DescriptorProto, name: str, path: tuple[int, ...]) -> None:
        self.note(name, path)
        for i, field in enumerate(proto.field):
            self.note(f"{name}.{field.name}", (*path, _MESSAGE_FIELD, i))
        for i, nested in enumerate(proto.nested_type):
            self.message(nested, f"{name}.{nested.name}", (*path, _MESSAGE_NESTED, i))
        for i, nested_enum in enumerate(proto.enum_type):
            self.enum(nested_enum, f"{name}.{nested_enum.name}", (*path, _MESSAGE_ENUM, i))

    def enum(self, proto: descriptor_pb2.EnumDescriptorProto, name: str, path: tuple[int, ...]) -> None:
        self.note(name, path)
        for i, value in enumerate(proto.value):
            self.note(f"{name}.{value.name}", (*path, _ENUM_VALUE, i))


def shipped_comments() -> dict[str, str]:
    """The committed comments of the service's proto ({} when the file is missing from an install)."""
    try:
        text = resources.files("medsam2.api.pb.medsam2.v1").joinpath(COMMENTS_FILE).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        return {}
    return json.loads(text)


def main(argv: list[str]) -> int:
    """``DESCRIPTOR_SET OUT.json``: write the comments as sorted JSON."""
    source, target = argv
    comments = comments_of(Path(source).read_bytes())
    Path(target).write_text(json.dumps(comments, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
