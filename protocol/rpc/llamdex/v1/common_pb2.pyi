from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState

class RequestSignature(_message.Message):
    __slots__ = ("client_id", "timestamp_ms", "nonce", "signature", "key_fingerprint")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    timestamp_ms: int
    nonce: bytes
    signature: bytes
    key_fingerprint: str
    def __init__(self, client_id: _Optional[str] = ..., timestamp_ms: _Optional[int] = ..., nonce: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_fingerprint: _Optional[str] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("envelope_json", "digest", "receipt_id", "sequence", "kind")
    ENVELOPE_JSON_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    envelope_json: str
    digest: str
    receipt_id: str
    sequence: int
    kind: str
    def __init__(self, envelope_json: _Optional[str] = ..., digest: _Optional[str] = ..., receipt_id: _Optional[str] = ..., sequence: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class JobResult(_message.Message):
    __slots__ = ("job_id", "client_id", "base_model_id", "schema_digest", "connectors_reused", "state", "error", "metrics_json", "seconds")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CONNECTORS_REUSED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    client_id: str
    base_model_id: str
    schema_digest: str
    connectors_reused: bool
    state: JobState
    error: str
    metrics_json: str
    seconds: float
    def __init__(self, job_id: _Optional[str] = ..., client_id: _Optional[str] = ..., base_model_id: _Optional[str] = ..., schema_digest: _Optional[str] = ..., connectors_reused: _Optional[bool] = ..., state: _Optional[_Union[JobState, str]] = ..., error: _Optional[str] = ..., metrics_json: _Optional[str] = ..., seconds: _Optional[float] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "state", "stage", "fraction", "message", "time_ms", "result")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    stage: str
    fraction: float
    message: str
    time_ms: int
    result: JobResult
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[str] = ..., fraction: _Optional[float] = ..., message: _Optional[str] = ..., time_ms: _Optional[int] = ..., result: _Optional[_Union[JobResult, _Mapping]] = ...) -> None: ...
