"""A malformed request message gets a precise INVALID_ARGUMENT, not gRPC's bare INTERNAL.

gRPC answers a request whose bytes do not parse as the method's message with INTERNAL "Exception
deserializing request!", before any handler runs. `MalformedRequestInterceptor` (a server interceptor
both parties install) wraps each method's request deserializer: bytes that do not parse become a
`MalformedRequest` naming the message type and the parser's complaint, and the method answers
INVALID_ARGUMENT with code `BAD_REQUEST` in `llamdex-error-code` (for a client stream, at the message
that failed; what arrived before it is handled as usual, e.g. kept for a resumed upload).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import grpc

from protocol.rpc_errors import RpcError, abort


@dataclass(frozen=True)
class MalformedRequest:
    method: str
    size: int
    problem: str

    def error(self) -> RpcError:
        return RpcError("BAD_REQUEST", f"{self.method}: a request message of {self.size} bytes does not parse ({self.problem}); "
                        "send a message of the method's type, encoded as protobuf", rule="well-formed messages")


def _safe(method: str, parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if parse is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as e:  # noqa: BLE001 - any parse failure becomes a precise refusal
            return MalformedRequest(method, len(data), f"{type(e).__name__}: {e}"[:200])
    return deserialize


def _checked(it: Iterator[Any]) -> Iterator[Any]:
    for m in it:
        if isinstance(m, MalformedRequest):
            raise m.error()
        yield m


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method
        deser = _safe(method, handler.request_deserializer)
        if handler.request_streaming:
            inner = handler.stream_unary or handler.stream_stream

            def streaming(request_iterator: Any, context: Any) -> Any:
                return inner(_checked(request_iterator), context)
            if handler.stream_unary is not None:
                return handler._replace(request_deserializer=deser, stream_unary=streaming)
            return handler._replace(request_deserializer=deser, stream_stream=streaming)
        inner = handler.unary_unary or handler.unary_stream

        def unary(request: Any, context: Any) -> Any:
            if isinstance(request, MalformedRequest):
                abort(context, request.error())
            return inner(request, context)

        if handler.unary_unary is not None:
            return handler._replace(request_deserializer=deser, unary_unary=unary)

        def unary_stream(request: Any, context: Any) -> Any:
            if isinstance(request, MalformedRequest):
                abort(context, request.error())
            yield from inner(request, context)
        return handler._replace(request_deserializer=deser, unary_stream=unary_stream)


__all__ = ["MalformedRequest", "MalformedRequestInterceptor"]
