"""The gateway's route table, derived from the gRPC service descriptors: one source of truth for every route.

Each RPC of each service becomes ``POST /v1/<Method>``. How its body and answer travel over HTTP follows from the
method's shape alone, so RPCs added to the proto appear here (and in the OpenAPI document) without gateway changes:

- unary: a proto-JSON body, a proto-JSON answer;
- server streaming: server-sent events, one proto-JSON message per event; when the answer message is a file in
  chunks (a ``bytes data`` field), ``POST /v1/<Method>:download`` also gives the concatenated bytes;
- client streaming with a ``oneof`` of one message field and one ``bytes`` field (an upload: header, then data):
  the header as proto JSON in the ``X-Medsam2-Header`` request header (or as the JSON body when there is no data),
  the data as the raw request body, streamed into the servicer in chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

import grpc
from google.protobuf import descriptor as pbd
from google.protobuf import message_factory


class Shape(Enum):
    """How a method's request and response cross HTTP."""

    UNARY = "unary"
    SERVER_STREAM = "server_stream"
    UPLOAD = "upload"
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True, slots=True)
class Route:
    """One RPC as the gateway serves it."""

    name: str
    full_method: str
    method: pbd.MethodDescriptor
    shape: Shape
    downloadable: bool
    upload_fields: tuple[str, str] | None
    """(header field, data field) of an upload's oneof."""

    def request_class(self) -> type:
        """The generated request message class."""
        return message_factory.GetMessageClass(self.method.input_type)

    def response_class(self) -> type:
        """The generated response message class."""
        return message_factory.GetMessageClass(self.method.output_type)


def upload_fields(message: pbd.Descriptor) -> tuple[str, str] | None:
    """The (header, data) fields of a message that is one oneof of a message field and a bytes field, else None."""
    if len(message.oneofs) != 1 or len(message.fields) != 2:
        return None
    kinds = {f.type: f.name for f in message.oneofs[0].fields}
    if set(kinds) != {pbd.FieldDescriptor.TYPE_MESSAGE, pbd.FieldDescriptor.TYPE_BYTES}:
        return None
    return kinds[pbd.FieldDescriptor.TYPE_MESSAGE], kinds[pbd.FieldDescriptor.TYPE_BYTES]


def is_file_chunk(message: pbd.Descriptor) -> bool:
    """True when a streamed answer carries a file in chunks (a ``bytes data`` field)."""
    field = message.fields_by_name.get("data")
    return field is not None and field.type == pbd.FieldDescriptor.TYPE_BYTES


def routes_for(services: Iterable[pbd.ServiceDescriptor]) -> dict[str, Route]:
    """Every method of the services, keyed by its route name (the method name; names must not clash)."""
    table: dict[str, Route] = {}
    for service in services:
        for method in service.methods:
            if method.name in table:
                raise ValueError(f"two services define {method.name}: the gateway needs unique method names")
            upload = upload_fields(method.input_type) if method.client_streaming else None
            if method.client_streaming:
                shape = Shape.UPLOAD if upload and not method.server_streaming else Shape.UNSUPPORTED
            else:
                shape = Shape.SERVER_STREAM if method.server_streaming else Shape.UNARY
            table[method.name] = Route(
                name=method.name,
                full_method=f"/{service.full_name}/{method.name}",
                method=method,
                shape=shape,
                downloadable=shape is Shape.SERVER_STREAM and is_file_chunk(method.output_type),
                upload_fields=upload,
            )
    return table


class HandlerCollector:
    """Stands in for a ``grpc.Server`` to collect the method handlers that generated ``add_*_to_server`` register."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._generic: list[grpc.GenericRpcHandler] = []

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Keep generic handlers (older generated code registers only these)."""
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """Keep the per-method handlers of one service."""
        self.handlers.update({f"/{service}/{name}": h for name, h in handlers.items()})

    def lookup(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """The handler of a method, as a server would find it."""
        handler = self.handlers.get(details.method)
        for generic in self._generic:
            if handler is not None:
                break
            handler = generic.service(details)
        return handler


class CallDetails(grpc.HandlerCallDetails):
    """What interceptors see of a call: its method and metadata."""

    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...]) -> None:
        self.method = method
        self.invocation_metadata = metadata


def intercepted_lookup(
    collector: HandlerCollector, interceptors: Iterable[grpc.ServerInterceptor]
) -> Callable[[CallDetails], grpc.RpcMethodHandler | None]:
    """Find a handler through the server's interceptors, in the order grpc.server applies them."""
    chain = list(interceptors)

    def at(index: int) -> Callable[[CallDetails], grpc.RpcMethodHandler | None]:
        if index == len(chain):
            return collector.lookup
        return lambda details: chain[index].intercept_service(at(index + 1), details)

    return at(0)
