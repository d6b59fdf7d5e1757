"""The OpenAPI 3.1 document of the gateway, generated from the same route table as the routes themselves."""

from __future__ import annotations

from google.protobuf import descriptor as pbd

from medsam2.gateway.routes import Route, Shape

_SCALARS: dict[int, dict] = {
    pbd.FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    pbd.FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    pbd.FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    pbd.FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    pbd.FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    pbd.FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0},
    pbd.FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0},
    # Proto JSON writes 64-bit integers as strings (JavaScript numbers lose precision above 2**53).
    pbd.FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    pbd.FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    pbd.FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    pbd.FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    pbd.FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    pbd.FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    pbd.FieldDescriptor.TYPE_STRING: {"type": "string"},
    pbd.FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "integer"}, "status": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def document(
    routes: dict[str, Route],
    *,
    title: str,
    version: str,
    comments: dict[str, str] | None = None,
    required: dict[str, tuple[str, ...]] | None = None,
) -> dict:
    """An OpenAPI 3.1 document with one path per route and a schema per message and enum they use."""
    schemas: dict[str, dict] = {"Error": _ERROR}
    paths: dict[str, dict] = {}
    for route in routes.values():
        if route.shape is Shape.UNSUPPORTED:
            continue
        _add_message(route.method.input_type, schemas)
        _add_message(route.method.output_type, schemas)
        paths[f"/v1/{route.name}"] = {"post": _operation(route)}
        if route.downloadable:
            paths[f"/v1/{route.name}:download"] = {"post": _download(route)}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "REST/JSON mapping of the gRPC API (proto3 JSON). Errors carry the gRPC status.",
        },
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }


def _ref(descriptor: pbd.Descriptor | pbd.EnumDescriptor) -> dict:
    return {"$ref": f"#/components/schemas/{descriptor.full_name}"}


def _errors() -> dict:
    return {
        "default": {
            "description": "a gRPC status as HTTP",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    }


def _operation(route: Route) -> dict:
    method = route.method
    operation: dict = {"operationId": route.name, "tags": [method.containing_service.name]}
    if route.shape is Shape.UPLOAD:
        header, data = route.upload_fields or ("", "")
        header_type = method.input_type.fields_by_name[header].message_type
        operation["description"] = (
            f"Upload: the {header} ({header_type.name}) as proto JSON in the "
            f"X-Medsam2-Header request header, the {data} as the raw body; or the {header} "
            "as the JSON body when there is no data."
        )
        operation["parameters"] = [
            {
                "name": "X-Medsam2-Header",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": f"{header_type.full_name} as JSON",
            }
        ]
        operation["requestBody"] = {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": _ref(header_type)},
            }
        }
    else:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(method.input_type)}},
        }
    if route.shape is Shape.SERVER_STREAM:
        operation["description"] = (
            f"Server-sent events: one {method.output_type.name} per `data:` line, then "
            "`event: end`; a failure mid-stream is an `event: error` with the Error body."
        )
        operation["responses"] = {
            "200": {
                "description": "a stream",
                "content": {
                    "text/event-stream": {"schema": {"type": "string"}, "x-event-schema": _ref(method.output_type)}
                },
            },
            **_errors(),
        }
    else:
        operation["responses"] = {
            "200": {
                "description": method.output_type.name,
                "content": {"application/json": {"schema": _ref(method.output_type)}},
            },
            **_errors(),
        }
    return operation


def _download(route: Route) -> dict:
    return {
        "operationId": f"{route.name}Download",
        "tags": [route.method.containing_service.name],
        "description": f"The {route.method.output_type.name} data chunks concatenated into one file; the first "
        "chunk's other fields as JSON in the X-Medsam2-Chunk response header.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(route.method.input_type)}}},
        "responses": {
            "200": {
                "description": "the file",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
            **_errors(),
        },
    }


def _add_message(message: pbd.Descriptor, schemas: dict[str, dict]) -> None:
    if message.full_name in schemas:
        return
    properties: dict[str, dict] = {}
    schemas[message.full_name] = {"type": "object", "properties": properties}
    for field in message.fields:
        if field.type == pbd.FieldDescriptor.TYPE_MESSAGE:
            _add_message(field.message_type, schemas)
            item = _ref(field.message_type)
        elif field.type == pbd.FieldDescriptor.TYPE_ENUM:
            _add_enum(field.enum_type, schemas)
            item = _ref(field.enum_type)
        else:
            item = dict(_SCALARS[field.type])
        is_repeated = getattr(field, "is_repeated", None)
        repeated = is_repeated if isinstance(is_repeated, bool) else field.label == pbd.FieldDescriptor.LABEL_REPEATED
        properties[field.json_name] = {"type": "array", "items": item} if repeated else item
    oneofs = [o for o in message.oneofs if not o.name.startswith("_")]  # "_x" oneofs are proto3 optional
    if oneofs:
        schemas[message.full_name]["description"] = "; ".join(
            f"at most one of {', '.join(f.json_name for f in o.fields)}" for o in oneofs
        )


def _add_enum(enum: pbd.EnumDescriptor, schemas: dict[str, dict]) -> None:
    schemas.setdefault(enum.full_name, {"type": "string", "enum": [v.name for v in enum.values]})
