from protocol.rpc.llamdex.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HelloRequest(_message.Message):
    __slots__ = ("client_version", "challenge")
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    client_version: str
    challenge: bytes
    def __init__(self, client_version: _Optional[str] = ..., challenge: _Optional[bytes] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_message_bytes", "max_artifact_bytes", "max_chunk_bytes", "max_batch_questions", "max_question_chars", "signature_max_skew_ms", "upload_ttl_s", "max_open_uploads", "max_page_size", "max_requests_per_second", "max_job_queue", "upload_digests", "max_question_tokens", "max_streams_per_client")
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ARTIFACT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUESTION_CHARS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_MAX_SKEW_MS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_TTL_S_FIELD_NUMBER: _ClassVar[int]
    MAX_OPEN_UPLOADS_FIELD_NUMBER: _ClassVar[int]
    MAX_PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    MAX_JOB_QUEUE_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUESTION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_STREAMS_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    max_message_bytes: int
    max_artifact_bytes: int
    max_chunk_bytes: int
    max_batch_questions: int
    max_question_chars: int
    signature_max_skew_ms: int
    upload_ttl_s: int
    max_open_uploads: int
    max_page_size: int
    max_requests_per_second: float
    max_job_queue: int
    upload_digests: _containers.RepeatedScalarFieldContainer[str]
    max_question_tokens: int
    max_streams_per_client: int
    def __init__(self, max_message_bytes: _Optional[int] = ..., max_artifact_bytes: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., max_batch_questions: _Optional[int] = ..., max_question_chars: _Optional[int] = ..., signature_max_skew_ms: _Optional[int] = ..., upload_ttl_s: _Optional[int] = ..., max_open_uploads: _Optional[int] = ..., max_page_size: _Optional[int] = ..., max_requests_per_second: _Optional[float] = ..., max_job_queue: _Optional[int] = ..., upload_digests: _Optional[_Iterable[str]] = ..., max_question_tokens: _Optional[int] = ..., max_streams_per_client: _Optional[int] = ...) -> None: ...

class HelloResponse(_message.Message):
    __slots__ = ("protocol_version", "provider_id", "base_model_id", "schemas_ready", "accepts_any_schema", "limits", "provider_public_key_pem", "provider_key_fingerprint", "client_id", "accountants", "receipt_keys_json", "hello_proof")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMAS_READY_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_ANY_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANTS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_KEYS_JSON_FIELD_NUMBER: _ClassVar[int]
    HELLO_PROOF_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    provider_id: str
    base_model_id: str
    schemas_ready: _containers.RepeatedScalarFieldContainer[str]
    accepts_any_schema: bool
    limits: Limits
    provider_public_key_pem: str
    provider_key_fingerprint: str
    client_id: str
    accountants: _containers.RepeatedScalarFieldContainer[str]
    receipt_keys_json: str
    hello_proof: str
    def __init__(self, protocol_version: _Optional[str] = ..., provider_id: _Optional[str] = ..., base_model_id: _Optional[str] = ..., schemas_ready: _Optional[_Iterable[str]] = ..., accepts_any_schema: _Optional[bool] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., provider_public_key_pem: _Optional[str] = ..., provider_key_fingerprint: _Optional[str] = ..., client_id: _Optional[str] = ..., accountants: _Optional[_Iterable[str]] = ..., receipt_keys_json: _Optional[str] = ..., hello_proof: _Optional[str] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("upload_id", "dataset_id", "artifact_name", "total_bytes", "artifact_sha256", "artifact_blake3", "resume_offset", "auth")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_SHA256_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_BLAKE3_FIELD_NUMBER: _ClassVar[int]
    RESUME_OFFSET_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    dataset_id: str
    artifact_name: str
    total_bytes: int
    artifact_sha256: str
    artifact_blake3: str
    resume_offset: int
    auth: _common_pb2.RequestSignature
    def __init__(self, upload_id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., artifact_name: _Optional[str] = ..., total_bytes: _Optional[int] = ..., artifact_sha256: _Optional[str] = ..., artifact_blake3: _Optional[str] = ..., resume_offset: _Optional[int] = ..., auth: _Optional[_Union[_common_pb2.RequestSignature, _Mapping]] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("offset", "data", "sha256", "blake3")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BLAKE3_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    sha256: str
    blake3: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ..., blake3: _Optional[str] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    chunk: UploadChunk
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., chunk: _Optional[_Union[UploadChunk, _Mapping]] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("upload_id", "complete", "received_bytes", "artifact_digest", "receipt", "verify_seconds", "checks")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    VERIFY_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    complete: bool
    received_bytes: int
    artifact_digest: str
    receipt: _common_pb2.Receipt
    verify_seconds: float
    checks: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, upload_id: _Optional[str] = ..., complete: _Optional[bool] = ..., received_bytes: _Optional[int] = ..., artifact_digest: _Optional[str] = ..., receipt: _Optional[_Union[_common_pb2.Receipt, _Mapping]] = ..., verify_seconds: _Optional[float] = ..., checks: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUploadStatusRequest(_message.Message):
    __slots__ = ("upload_id",)
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    def __init__(self, upload_id: _Optional[str] = ...) -> None: ...

class UploadStatus(_message.Message):
    __slots__ = ("upload_id", "state", "received_bytes", "total_bytes", "artifact_digest", "receipt", "error", "digest")
    UPLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    upload_id: str
    state: str
    received_bytes: int
    total_bytes: int
    artifact_digest: str
    receipt: _common_pb2.Receipt
    error: str
    digest: str
    def __init__(self, upload_id: _Optional[str] = ..., state: _Optional[str] = ..., received_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., artifact_digest: _Optional[str] = ..., receipt: _Optional[_Union[_common_pb2.Receipt, _Mapping]] = ..., error: _Optional[str] = ..., digest: _Optional[str] = ...) -> None: ...

class CustomizeRequest(_message.Message):
    __slots__ = ("artifact_digest", "preset", "retrain")
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_FIELD_NUMBER: _ClassVar[int]
    artifact_digest: str
    preset: str
    retrain: bool
    def __init__(self, artifact_digest: _Optional[str] = ..., preset: _Optional[str] = ..., retrain: _Optional[bool] = ...) -> None: ...

class CustomizeResponse(_message.Message):
    __slots__ = ("job_id", "state", "connectors_reused", "schema_digest", "base_model_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CONNECTORS_REUSED_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: _common_pb2.JobState
    connectors_reused: bool
    schema_digest: str
    base_model_id: str
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[_common_pb2.JobState, str]] = ..., connectors_reused: _Optional[bool] = ..., schema_digest: _Optional[str] = ..., base_model_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class AskRequest(_message.Message):
    __slots__ = ("questions", "artifact_digest", "include_base")
    QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BASE_FIELD_NUMBER: _ClassVar[int]
    questions: _containers.RepeatedScalarFieldContainer[str]
    artifact_digest: str
    include_base: bool
    def __init__(self, questions: _Optional[_Iterable[str]] = ..., artifact_digest: _Optional[str] = ..., include_base: _Optional[bool] = ...) -> None: ...

class Answer(_message.Message):
    __slots__ = ("answer", "class_index", "probs", "expert_probs", "base_probs")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CLASS_INDEX_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    EXPERT_PROBS_FIELD_NUMBER: _ClassVar[int]
    BASE_PROBS_FIELD_NUMBER: _ClassVar[int]
    answer: str
    class_index: int
    probs: _containers.RepeatedScalarFieldContainer[float]
    expert_probs: _containers.RepeatedScalarFieldContainer[float]
    base_probs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, answer: _Optional[str] = ..., class_index: _Optional[int] = ..., probs: _Optional[_Iterable[float]] = ..., expert_probs: _Optional[_Iterable[float]] = ..., base_probs: _Optional[_Iterable[float]] = ...) -> None: ...

class AskResponse(_message.Message):
    __slots__ = ("answers", "classes", "verbalizers", "artifact_digest", "seconds")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    VERBALIZERS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[Answer]
    classes: _containers.RepeatedScalarFieldContainer[str]
    verbalizers: _containers.RepeatedScalarFieldContainer[str]
    artifact_digest: str
    seconds: float
    def __init__(self, answers: _Optional[_Iterable[_Union[Answer, _Mapping]]] = ..., classes: _Optional[_Iterable[str]] = ..., verbalizers: _Optional[_Iterable[str]] = ..., artifact_digest: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class GetLedgerRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("seq", "kind", "dataset_id", "artifact_digest", "entry_digest", "prev_digest", "created_at", "receipt")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ENTRY_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PREV_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    dataset_id: str
    artifact_digest: str
    entry_digest: str
    prev_digest: str
    created_at: str
    receipt: _common_pb2.Receipt
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., dataset_id: _Optional[str] = ..., artifact_digest: _Optional[str] = ..., entry_digest: _Optional[str] = ..., prev_digest: _Optional[str] = ..., created_at: _Optional[str] = ..., receipt: _Optional[_Union[_common_pb2.Receipt, _Mapping]] = ...) -> None: ...

class GetLedgerResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LedgerEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[LedgerEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("artifact_digest", "auth")
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    artifact_digest: str
    auth: _common_pb2.RequestSignature
    def __init__(self, artifact_digest: _Optional[str] = ..., auth: _Optional[_Union[_common_pb2.RequestSignature, _Mapping]] = ...) -> None: ...

class ForgetResponse(_message.Message):
    __slots__ = ("receipts", "deleted")
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    receipts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Receipt]
    deleted: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, receipts: _Optional[_Iterable[_Union[_common_pb2.Receipt, _Mapping]]] = ..., deleted: _Optional[_Iterable[str]] = ...) -> None: ...
