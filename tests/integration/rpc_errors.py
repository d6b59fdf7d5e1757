"""What a refused RPC said: the error itself (unary or streamed), its google.rpc ErrorInfo reason, its details."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def rpc_failure(call: Callable[[], object]) -> grpc.RpcError:
    """The ``grpc.RpcError`` that ``call`` raises; a server stream is read to its end, where its error surfaces."""
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    return info.value


def rpc_reason(error: grpc.RpcError) -> str:
    """The ErrorInfo reason among the error's google.rpc details."""
    info = error_details_pb2.ErrorInfo()
    next(d for d in rpc_status.from_call(error).details if d.Is(info.DESCRIPTOR)).Unpack(info)
    return info.reason


def status_json(error: grpc.RpcError) -> tuple[str, str, list[dict]]:
    """(status name, message, details in proto3 JSON) of a refused RPC, as the HTTP gateway writes its body."""
    status = rpc_status.from_call(error)
    details = [json_format.MessageToDict(d) for d in status.details] if status is not None else []
    return error.code().name, error.details() or "", details
