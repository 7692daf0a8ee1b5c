"""One table from error codes (`CodedError.code`) to gRPC status codes, used by both services.

Every refusal carries the status, a message that names the input, the rule and the fix, and the
machine-readable code in the trailing metadata `llamdex-error-code` (read it with `error_code`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable

import grpc

from protocol.errors import CodedError, DataValidationError, LlamdexError

log = logging.getLogger(__name__)
ERROR_CODE_METADATA = "llamdex-error-code"
S = grpc.StatusCode

STATUS_BY_CODE: dict[str, grpc.StatusCode] = {
    # who is calling
    "UNREGISTERED_CLIENT": S.PERMISSION_DENIED, "NO_IDENTITY": S.UNAUTHENTICATED, "CALLER_NOT_ALLOWED": S.PERMISSION_DENIED,
    "MISSING_SIGNATURE": S.UNAUTHENTICATED, "BAD_REQUEST_SIGNATURE": S.UNAUTHENTICATED, "STALE_REQUEST": S.UNAUTHENTICATED,
    "REPLAYED_REQUEST": S.UNAUTHENTICATED, "IDENTITY_MISMATCH": S.PERMISSION_DENIED, "RATE_LIMITED": S.RESOURCE_EXHAUSTED,
    "KEY_REVOKED": S.PERMISSION_DENIED,   # message: protocol.operator_errors.revoked_key
    "OVERLOADED": S.RESOURCE_EXHAUSTED, "DISK_FULL": S.RESOURCE_EXHAUSTED, "TOO_MANY_JOBS": S.RESOURCE_EXHAUSTED, "LEDGER_CORRUPT": S.DATA_LOSS,
    # the upload stream
    "BAD_REQUEST": S.INVALID_ARGUMENT, "DATA_INVALID": S.FAILED_PRECONDITION, "ARTIFACT_TOO_LARGE": S.RESOURCE_EXHAUSTED, "CHUNK_TOO_LARGE": S.RESOURCE_EXHAUSTED,
    "TOO_MANY_UPLOADS": S.RESOURCE_EXHAUSTED, "TOO_MANY_STREAMS": S.RESOURCE_EXHAUSTED, "OFFSET_MISMATCH": S.FAILED_PRECONDITION, "PAST_END": S.OUT_OF_RANGE,
    "CHUNK_DIGEST_MISMATCH": S.DATA_LOSS, "ARTIFACT_SHA256_MISMATCH": S.DATA_LOSS, "UPLOAD_MISMATCH": S.FAILED_PRECONDITION,
    "UPLOAD_BUSY": S.ABORTED, "UPLOAD_FAILED": S.FAILED_PRECONDITION, "UPLOAD_NOT_FOUND": S.NOT_FOUND,
    "ARTIFACT_EXISTS": S.ALREADY_EXISTS,
    # artifact verification (protocol.artifact codes)
    "BAD_ARCHIVE": S.INVALID_ARGUMENT, "SYMLINK": S.INVALID_ARGUMENT, "PATH_TRAVERSAL": S.INVALID_ARGUMENT,
    "FORBIDDEN_FILE": S.INVALID_ARGUMENT, "NOT_REGULAR_FILE": S.INVALID_ARGUMENT, "MISSING_FILE": S.INVALID_ARGUMENT,
    "FILE_TOO_LARGE": S.RESOURCE_EXHAUSTED, "DUPLICATE_ENTRY": S.INVALID_ARGUMENT, "NOT_A_DIRECTORY": S.INVALID_ARGUMENT,
    "DEST_NOT_EMPTY": S.INTERNAL,
    "BAD_BUNDLE": S.INVALID_ARGUMENT, "UNTRUSTED_KEY": S.PERMISSION_DENIED, "BAD_SIGNATURE": S.INVALID_ARGUMENT,
    "BAD_STATEMENT": S.INVALID_ARGUMENT, "UNSUPPORTED_SERIALIZATION": S.INVALID_ARGUMENT,
    "DIGEST_MISMATCH": S.INVALID_ARGUMENT, "SIZE_MISMATCH": S.INVALID_ARGUMENT, "UNLISTED_FILE": S.INVALID_ARGUMENT,
    "SPEC_INVALID": S.INVALID_ARGUMENT, "SCHEMA_INVALID": S.INVALID_ARGUMENT, "SPEC_MISMATCH": S.INVALID_ARGUMENT,
    "TENSOR_MISMATCH": S.INVALID_ARGUMENT, "DP_INVALID": S.INVALID_ARGUMENT,
    # privacy
    "DP_MISMATCH": S.INVALID_ARGUMENT, "BUDGET_EXCEEDED": S.RESOURCE_EXHAUSTED, "POLICY_REFUSED": S.FAILED_PRECONDITION,
    # receipts (client side)
    "BAD_RECEIPT": S.INVALID_ARGUMENT, "CHAIN_BROKEN": S.FAILED_PRECONDITION, "SEQUENCE_GAP": S.FAILED_PRECONDITION,
    "ARITHMETIC": S.INVALID_ARGUMENT, "PROVIDER_NOT_PROVEN": S.PERMISSION_DENIED,
    # jobs, questions, ledger
    "EXPERT_NOT_FOUND": S.NOT_FOUND, "JOB_NOT_FOUND": S.NOT_FOUND, "NOT_CUSTOMIZED": S.FAILED_PRECONDITION,
    "QUEUE_FULL": S.RESOURCE_EXHAUSTED, "BAD_PAGE_TOKEN": S.INVALID_ARGUMENT, "BAD_PAGE_SIZE": S.INVALID_ARGUMENT,
    "NOTHING_TO_FORGET": S.NOT_FOUND, "NOT_FOUND": S.NOT_FOUND, "UNKNOWN_DATASET": S.NOT_FOUND,
    # Ask serving (provider_party/model/batching.py; QUEUE_FULL above is its back-pressure too)
    "DEADLINE_EXCEEDED": S.DEADLINE_EXCEEDED, "SHUTTING_DOWN": S.UNAVAILABLE,
}


class RpcError(CodedError):
    """A refusal raised inside a handler; `guard` turns it into the mapped gRPC status."""


def status_for(err: CodedError) -> grpc.StatusCode:
    return STATUS_BY_CODE.get(err.code, S.INVALID_ARGUMENT)


MAX_DETAILS_CHARS = 2000   # gRPC refuses a status whose (percent-encoded) message passes its 16 KiB metadata limit


def capped(text: str, limit: int = MAX_DETAILS_CHARS) -> str:
    """A message short enough to reach the caller: one that echoes a huge input (a 100k-character id) would otherwise
    arrive as a bare RESOURCE_EXHAUSTED without its status or code."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit} more characters)"


def abort(context: Any, err: CodedError) -> None:
    """Ends the call with the mapped status, the message and the code in trailing metadata (raises)."""
    context.set_trailing_metadata(((ERROR_CODE_METADATA, err.code),))
    context.abort(status_for(err), capped(str(err)))


def relay(context: Any, e: grpc.Call) -> None:
    """Ends the call with the status and code of a call this handler made that was refused (the ClientService calling
    the provider): the caller learns what the other party said, not UNKNOWN with the refusal's debug string."""
    status = e.code() or S.UNKNOWN
    details = e.details()
    code = error_code(e) or status.name
    context.set_trailing_metadata(((ERROR_CODE_METADATA, code),))
    context.abort(status, capped(f"the other party refused a call this one made: {status.name}: {details or '(no message)'}"))


def redacted_data_error(e: DataValidationError) -> CodedError:
    """What a remote caller learns when the served party's own table violates its schema: how many problems of which
    kinds in which (public) columns, never a cell value, a row number or a file name. The values are private data;
    the data owner sees them locally (`llamdex schema check`)."""
    return CodedError("DATA_INVALID", f"the party's own table violates its schema: {len(e.problems)} problem(s) in: {e.kinds()}. The values stay "
                      "with the data owner: `llamdex schema check` on its host names them", rule="private values never leave")


def as_coded(e: LlamdexError) -> CodedError:
    """What a handler's refusal says to the caller: a CodedError as it is; a schema violation of the party's own table
    with its values redacted; any other deliberate error as BAD_REQUEST."""
    if isinstance(e, CodedError):
        return e
    if isinstance(e, DataValidationError):
        return redacted_data_error(e)
    return CodedError("BAD_REQUEST", str(e))


def guard(handler: Callable) -> Callable:
    """Decorator for servicer methods: CodedError → its status; other LlamdexError → INVALID_ARGUMENT;
    anything else → INTERNAL (logged, no details leak)."""
    @functools.wraps(handler)
    def wrapper(self, request, context):
        try:
            return handler(self, request, context)
        except LlamdexError as e:
            abort(context, as_coded(e))
        except grpc.RpcError as e:
            if not isinstance(e, grpc.Call):   # the caller's own stream ended (cancelled, cut): nothing to tell it
                raise
            relay(context, e)
        except Exception as e:  # noqa: BLE001
            log.exception("internal error in %s", handler.__name__)
            context.set_trailing_metadata(((ERROR_CODE_METADATA, "INTERNAL"),))
            context.abort(S.INTERNAL, f"internal error ({type(e).__name__}); see the server log")
    return wrapper


def guard_stream(handler: Callable) -> Callable:
    """`guard` for server-streaming handlers (generators)."""
    @functools.wraps(handler)
    def wrapper(self, request, context):
        try:
            yield from handler(self, request, context)
        except LlamdexError as e:
            abort(context, as_coded(e))
        except grpc.RpcError as e:
            if not isinstance(e, grpc.Call):   # the caller's own stream ended (cancelled, cut): nothing to tell it
                raise
            relay(context, e)
        except Exception as e:  # noqa: BLE001
            log.exception("internal error in %s", handler.__name__)
            context.set_trailing_metadata(((ERROR_CODE_METADATA, "INTERNAL"),))
            context.abort(S.INTERNAL, f"internal error ({type(e).__name__}); see the server log")
    return wrapper


def error_code(err: grpc.RpcError) -> str | None:
    """The `llamdex-error-code` of a failed call (None if the server sent none)."""
    try:
        for k, v in err.trailing_metadata() or ():
            if k == ERROR_CODE_METADATA:
                return v
    except Exception:  # noqa: BLE001
        return None
    return None


__all__ = ["ERROR_CODE_METADATA", "MAX_DETAILS_CHARS", "RpcError", "STATUS_BY_CODE", "abort", "capped", "error_code", "guard", "guard_stream",
           "relay", "status_for"]
