"""The OpenAPI 3.1 document of the gateway, generated from the same route table as the routes themselves.

It can reject: every message schema lists its fields (``additionalProperties: false``) and the fields the server
refuses without (``required``), each with the proto's own comment as its description; every operation lists the
statuses the gateway sends, each error as the ``google.rpc.Status`` JSON body, and the headers that come with them
(``Retry-After``, ``X-Medsam2-Chunk``). Keys are sorted when it is served, so the document is deterministic.
"""

from __future__ import annotations

from google.protobuf import descriptor as pbd

from medsam2.gateway.body import FRAMED_UPLOAD_TYPE
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
_DETAIL = {
    "type": "object",
    "description": "A google.rpc detail (ErrorInfo, BadRequest, RetryInfo, ...) in proto3 JSON, named by its @type.",
    "properties": {"@type": {"type": "string"}},
    "required": ["@type"],
    "additionalProperties": True,
}
_ERROR = {
    "type": "object",
    "description": "A failed call: its google.rpc.Status in proto3 JSON, as Google's HTTP APIs write it.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status."},
                "status": {"type": "string", "description": "The gRPC status code's name (NOT_FOUND, ...)."},
                "message": {"type": "string", "description": "What went wrong, for a person."},
                "details": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/StatusDetail"},
                    "description": "The same google.rpc details a gRPC client gets.",
                },
            },
            "required": ["code", "status", "message"],
            "additionalProperties": False,
        }
    },
    "required": ["error"],
    "additionalProperties": False,
}
_STREAM_END = {
    "type": "object",
    "description": "The data of the `event: end` that closes a successful stream: an empty object.",
    "additionalProperties": False,
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying (from the status's RetryInfo).",
    "schema": {"type": "integer", "minimum": 1},
}
_CHUNK_HEADER = {
    "description": "The first chunk's fields but data, as proto JSON (shape, objectIds, ...).",
    "schema": {"type": "string"},
}
ERROR_STATUSES: dict[str, str] = {
    "400": "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE; or a request the gateway cannot parse",
    "401": "UNAUTHENTICATED: a missing or wrong bearer token (judged before the body is read)",
    "403": "PERMISSION_DENIED",
    "404": "NOT_FOUND",
    "409": "ABORTED or ALREADY_EXISTS (e.g. the session is busy)",
    "411": "a body whose length the request does not declare",
    "413": "a body or upload larger than the server's limits (judged from Content-Length before reading)",
    "414": "HEADERS_TOO_LARGE (RESOURCE_EXHAUSTED): a request line longer than the gateway reads",
    "415": "a Content-Type this route does not take",
    "429": "RESOURCE_EXHAUSTED (limits, quotas); Retry-After says when to try again",
    "431": "HEADERS_TOO_LARGE (RESOURCE_EXHAUSTED): request headers too large (send a large upload header in the "
    "body instead)",
    "499": "CANCELLED",
    "500": "INTERNAL or UNKNOWN",
    "501": "UNIMPLEMENTED (UNSUPPORTED_PROTOCOL: an HTTP method or Transfer-Encoding the gateway does not serve)",
    "503": "UNAVAILABLE (backend not ready, server draining, gateway at its connection cap); Retry-After",
    "504": "DEADLINE_EXCEEDED",
    "505": "UNIMPLEMENTED (UNSUPPORTED_PROTOCOL: an HTTP version other than 1.0 and 1.1)",
}
"""Every error status the gateway sends (the gRPC mapping in context.py plus its own refusals)."""


def document(
    routes: dict[str, Route],
    *,
    title: str,
    version: str,
    comments: dict[str, str] | None = None,
    required: dict[str, tuple[str, ...]] | None = None,
) -> dict:
    """An OpenAPI 3.1 document with one path per route and a schema per message and enum they use.

    ``comments``: descriptions by proto full name (``proto_comments``); ``required``: proto field names the
    server refuses a request without, by message full name.
    """
    schemas: dict[str, dict] = {"Error": _ERROR, "StatusDetail": _DETAIL, "StreamEnd": _STREAM_END}
    paths: dict[str, dict] = {}
    build = _Schemas(schemas, comments or {}, required or {})
    for route in routes.values():
        if route.shape is Shape.UNSUPPORTED:
            continue
        build.message(route.method.input_type)
        build.message(route.method.output_type)
        paths[f"/v1/{route.name}"] = {"post": _operation(route, comments or {})}
        if route.downloadable:
            paths[f"/v1/{route.name}:download"] = {"post": _download(route, comments or {})}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "REST/JSON mapping of the gRPC API (proto3 JSON, camelCase field names). Errors carry "
            "the gRPC status and its google.rpc details.",
        },
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
        "paths": paths,
    }


def _ref(descriptor: pbd.Descriptor | pbd.EnumDescriptor) -> dict:
    return {"$ref": f"#/components/schemas/{descriptor.full_name}"}


def _errors() -> dict:
    responses: dict[str, dict] = {}
    for code, text in ERROR_STATUSES.items():
        response: dict = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if code in ("429", "503"):
            response["headers"] = {"Retry-After": _RETRY_AFTER}
        responses[code] = response
    return responses


def _operation(route: Route, comments: dict[str, str]) -> dict:
    method = route.method
    operation: dict = {"operationId": route.name, "tags": [method.containing_service.name]}
    summary = comments.get(f"{method.containing_service.full_name}.{method.name}")
    if summary:
        operation["summary"] = summary
    if route.shape is Shape.UPLOAD:
        header, data = route.upload_fields or ("", "")
        header_type = method.input_type.fields_by_name[header].message_type
        operation["description"] = (
            f"Upload, in one of three forms: (1) `Content-Type: {FRAMED_UPLOAD_TYPE}`: a 4-byte big-endian "
            f"unsigned length N, then N bytes of the {header} ({header_type.name}) as UTF-8 proto JSON, then the "
            f"{data} (the header is bounded only by the server's message limit); (2) `application/octet-stream`: "
            f"the {header} as proto JSON in the X-Medsam2-Header request header (URI-encoded or raw JSON, at most "
            f"64 KiB), the {data} as the body; (3) `application/json`: the {header} as the body, with no {data} "
            "(a PACS reference). Bodies may be sent with Content-Length or Transfer-Encoding: chunked."
        )
        operation["parameters"] = [
            {
                "name": "X-Medsam2-Header",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": f"{header_type.full_name} as JSON (form 2)",
            }
        ]
        operation["requestBody"] = {
            "required": True,
            "content": {
                FRAMED_UPLOAD_TYPE: {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": _ref(header_type)},
            },
        }
    else:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(method.input_type)}},
        }
    if route.shape is Shape.SERVER_STREAM:
        operation["description"] = (
            f"Server-sent events: one {method.output_type.name} per `data:` line (x-event-schema), then "
            "`event: end` with an empty object (x-end-event-schema); a failure mid-stream is an `event: error` "
            "whose data is the Error body (x-error-event-schema). A failure before the first message is an "
            "ordinary JSON error response."
        )
        operation["responses"] = {
            "200": {
                "description": "a stream",
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "x-event-schema": _ref(method.output_type),
                        "x-end-event-schema": {"$ref": "#/components/schemas/StreamEnd"},
                        "x-error-event-schema": {"$ref": "#/components/schemas/Error"},
                    }
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


def _download(route: Route, comments: dict[str, str]) -> dict:
    return {
        "operationId": f"{route.name}Download",
        "tags": [route.method.containing_service.name],
        "description": f"The {route.method.output_type.name} data chunks concatenated into one file; the first "
        "chunk's other fields as JSON in the X-Medsam2-Chunk response header.",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(route.method.input_type)}}},
        "responses": {
            "200": {
                "description": "the file",
                "headers": {"X-Medsam2-Chunk": _CHUNK_HEADER},
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            },
            **_errors(),
        },
    }


class _Schemas:
    """Adds message and enum schemas, with descriptions and required lists, to ``schemas``."""

    def __init__(
        self, schemas: dict[str, dict], comments: dict[str, str], required: dict[str, tuple[str, ...]]
    ) -> None:
        self.schemas = schemas
        self.comments = comments
        self.required = required

    def message(self, message: pbd.Descriptor) -> None:
        if message.full_name in self.schemas:
            return
        properties: dict[str, dict] = {}
        schema: dict = {"type": "object", "properties": properties, "additionalProperties": False}
        self.schemas[message.full_name] = schema
        description = [self.comments.get(message.full_name, "")]
        for field in message.fields:
            properties[field.json_name] = self._field(field)
        oneofs = [o for o in message.oneofs if not o.name.startswith("_")]  # "_x" oneofs are proto3 optional
        description += [f"At most one of {', '.join(f.json_name for f in o.fields)}." for o in oneofs]
        if any(description):
            schema["description"] = " ".join(d for d in description if d)
        needed = self.required.get(message.full_name, ())
        unknown = [n for n in needed if n not in message.fields_by_name]
        if unknown:
            raise ValueError(f"required fields {unknown} are not fields of {message.full_name}")
        if needed:
            schema["required"] = [message.fields_by_name[n].json_name for n in needed]

    def _field(self, field: pbd.FieldDescriptor) -> dict:
        if field.type == pbd.FieldDescriptor.TYPE_MESSAGE:
            self.message(field.message_type)
            item = _ref(field.message_type)
        elif field.type == pbd.FieldDescriptor.TYPE_ENUM:
            self.enum(field.enum_type)
            item = _ref(field.enum_type)
        else:
            item = dict(_SCALARS[field.type])
        is_repeated = getattr(field, "is_repeated", None)
        repeated = is_repeated if isinstance(is_repeated, bool) else field.label == pbd.FieldDescriptor.LABEL_REPEATED
        schema = {"type": "array", "items": item} if repeated else item
        description = self.comments.get(f"{field.containing_type.full_name}.{field.name}")
        if description:
            # A $ref with siblings is allowed in OpenAPI 3.1 (JSON Schema 2020-12).
            schema = {**schema, "description": description}
        return schema

    def enum(self, enum: pbd.EnumDescriptor) -> None:
        if enum.full_name in self.schemas:
            return
        schema: dict = {"type": "string", "enum": [v.name for v in enum.values]}
        lines = [self.comments.get(enum.full_name, "")]
        lines += [
            f"{v.name}: {self.comments[f'{enum.full_name}.{v.name}']}"
            for v in enum.values
            if f"{enum.full_name}.{v.name}" in self.comments
        ]
        if any(lines):
            schema["description"] = " ".join(line for line in lines if line)
        self.schemas[enum.full_name] = schema
