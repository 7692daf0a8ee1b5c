"""The signed upload as Flower message content: the exact `UploadExpert` stream, serialized.

A client builds what its gRPC client would send (`client_party.provider_client`): an `UploadHeader`
naming the tar by its digest and signed with the client's registered key (fresh time and nonce), then
`UploadChunk`s each carrying its own digest. Each message is serialized with protobuf and travels as
bytes in a `ConfigRecord`; the orchestrator parses them back (protobuf, never pickle) and feeds them to
`ProviderParty.receive_upload`, the path the gRPC servicer uses. Nothing is trusted on the way: the
provider re-checks the header signature, each chunk digest, the tar digest and the artifact.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from protocol.request_auth import UPLOAD_METHOD, sign_request, upload_body
from protocol.rpc.llamdex.v1 import common_pb2, provider_pb2
from protocol.wire import upload_digests

CHUNK_BYTES = 1 << 20
DIGEST = "blake3"


def upload_messages(key: Any, client_id: str, tar: bytes, dataset_id: str, artifact_name: str, *,
                    chunk_bytes: int = CHUNK_BYTES, alg: str = DIGEST) -> list[bytes]:
    """[serialized UploadRequest(header), serialized UploadRequest(chunk), ...] for one whole upload."""
    tar_hex, chunk_hex = upload_digests(alg, tar, 0, chunk_bytes)
    h = provider_pb2.UploadHeader(upload_id=secrets.token_urlsafe(24), dataset_id=dataset_id, artifact_name=artifact_name,
                                  total_bytes=len(tar), resume_offset=0, **{f"artifact_{alg}": tar_hex})
    h.auth.CopyFrom(common_pb2.RequestSignature(**sign_request(key, client_id, UPLOAD_METHOD, upload_body(h)).to_proto_kwargs()))
    out = [provider_pb2.UploadRequest(header=h).SerializeToString()]
    for i, pos in enumerate(range(0, len(tar), chunk_bytes)):
        chunk = provider_pb2.UploadChunk(offset=pos, data=tar[pos:pos + chunk_bytes], **{alg: chunk_hex[i]})
        out.append(provider_pb2.UploadRequest(chunk=chunk).SerializeToString())
    return out


@dataclass
class ParsedUpload:
    header: Any                 # provider_pb2.UploadHeader
    chunks: list[Any]           # provider_pb2.UploadRequest messages, in order


class UploadStreamError(ValueError):
    """The bytes are not an UploadExpert stream (header first, then chunks)."""


def parse_upload(blobs: list[bytes]) -> ParsedUpload:
    from google.protobuf.message import DecodeError

    if not blobs:
        raise UploadStreamError("the upload carries no message; the first must be an UploadHeader")
    try:
        msgs = [provider_pb2.UploadRequest.FromString(bytes(b)) for b in blobs]
    except DecodeError as e:
        raise UploadStreamError(f"an upload message is not a llamdex.v1.UploadRequest: {e}") from None
    if msgs[0].WhichOneof("part") != "header":
        raise UploadStreamError("the first upload message must be an UploadHeader")
    return ParsedUpload(msgs[0].header, msgs[1:])


__all__ = ["ParsedUpload", "UploadStreamError", "parse_upload", "upload_messages"]
