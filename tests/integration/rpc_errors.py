"""What a refused RPC said: the error itself (unary or streamed) and its google.rpc ErrorInfo reason."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
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
