from protocol.rpc.llamdex.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientHelloRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClientHelloResponse(_message.Message):
    __slots__ = ("client_id", "key_fingerprint", "datasets", "max_epsilon", "provider_address", "caller")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    MAX_EPSILON_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    key_fingerprint: str
    datasets: _containers.RepeatedScalarFieldContainer[str]
    max_epsilon: float
    provider_address: str
    caller: str
    def __init__(self, client_id: _Optional[str] = ..., key_fingerprint: _Optional[str] = ..., datasets: _Optional[_Iterable[str]] = ..., max_epsilon: _Optional[float] = ..., provider_address: _Optional[str] = ..., caller: _Optional[str] = ...) -> None: ...

class TrainExpertRequest(_message.Message):
    __slots__ = ("dataset_id", "max_epsilon", "delta", "epochs", "seed", "upload")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    max_epsilon: float
    delta: float
    epochs: int
    seed: int
    upload: bool
    def __init__(self, dataset_id: _Optional[str] = ..., max_epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., epochs: _Optional[int] = ..., seed: _Optional[int] = ..., upload: _Optional[bool] = ...) -> None: ...

class TrainExpertResponse(_message.Message):
    __slots__ = ("artifact_digest", "dp_statement_json", "artifact_bytes", "expert_heldout_accuracy", "n_train", "n_test", "receipt", "train_seconds", "upload_seconds")
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DP_STATEMENT_JSON_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPERT_HELDOUT_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    N_TRAIN_FIELD_NUMBER: _ClassVar[int]
    N_TEST_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    artifact_digest: str
    dp_statement_json: str
    artifact_bytes: int
    expert_heldout_accuracy: float
    n_train: int
    n_test: int
    receipt: _common_pb2.Receipt
    train_seconds: float
    upload_seconds: float
    def __init__(self, artifact_digest: _Optional[str] = ..., dp_statement_json: _Optional[str] = ..., artifact_bytes: _Optional[int] = ..., expert_heldout_accuracy: _Optional[float] = ..., n_train: _Optional[int] = ..., n_test: _Optional[int] = ..., receipt: _Optional[_Union[_common_pb2.Receipt, _Mapping]] = ..., train_seconds: _Optional[float] = ..., upload_seconds: _Optional[float] = ...) -> None: ...

class ClientCustomizeRequest(_message.Message):
    __slots__ = ("artifact_digest", "preset")
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    artifact_digest: str
    preset: str
    def __init__(self, artifact_digest: _Optional[str] = ..., preset: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("artifact_digest", "max_questions", "batch_size", "include_base")
    ARTIFACT_DIGEST_FIELD_NUMBER: _ClassVar[int]
    MAX_QUESTIONS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_BASE_FIELD_NUMBER: _ClassVar[int]
    artifact_digest: str
    max_questions: int
    batch_size: int
    include_base: bool
    def __init__(self, artifact_digest: _Optional[str] = ..., max_questions: _Optional[int] = ..., batch_size: _Optional[int] = ..., include_base: _Optional[bool] = ...) -> None: ...

class ScoreRow(_message.Message):
    __slots__ = ("method", "has_epsilon", "epsilon", "accuracy", "balanced_accuracy", "macro_f1", "n_test")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HAS_EPSILON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    MACRO_F1_FIELD_NUMBER: _ClassVar[int]
    N_TEST_FIELD_NUMBER: _ClassVar[int]
    method: str
    has_epsilon: bool
    epsilon: float
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    n_test: int
    def __init__(self, method: _Optional[str] = ..., has_epsilon: _Optional[bool] = ..., epsilon: _Optional[float] = ..., accuracy: _Optional[float] = ..., balanced_accuracy: _Optional[float] = ..., macro_f1: _Optional[float] = ..., n_test: _Optional[int] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("dataset_id", "rows", "ask_seconds", "ask_calls", "agreement_with_expert")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ASK_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ASK_CALLS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_WITH_EXPERT_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    rows: _containers.RepeatedCompositeFieldContainer[ScoreRow]
    ask_seconds: float
    ask_calls: int
    agreement_with_expert: float
    def __init__(self, dataset_id: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[ScoreRow, _Mapping]]] = ..., ask_seconds: _Optional[float] = ..., ask_calls: _Optional[int] = ..., agreement_with_expert: _Optional[float] = ...) -> None: ...

class EvaluateEvent(_message.Message):
    __slots__ = ("asked", "total", "result")
    ASKED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    asked: int
    total: int
    result: EvaluateResponse
    def __init__(self, asked: _Optional[int] = ..., total: _Optional[int] = ..., result: _Optional[_Union[EvaluateResponse, _Mapping]] = ...) -> None: ...

class DeliverReceiptRequest(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: _common_pb2.Receipt
    def __init__(self, receipt: _Optional[_Union[_common_pb2.Receipt, _Mapping]] = ...) -> None: ...

class DeliverReceiptResponse(_message.Message):
    __slots__ = ("stored", "sequence")
    STORED_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    stored: bool
    sequence: int
    def __init__(self, stored: _Optional[bool] = ..., sequence: _Optional[int] = ...) -> None: ...

class DeliverJobResultRequest(_message.Message):
    __slots__ = ("result",)
    RESULT_FIELD_NUMBER: _ClassVar[int]
    result: _common_pb2.JobResult
    def __init__(self, result: _Optional[_Union[_common_pb2.JobResult, _Mapping]] = ...) -> None: ...

class DeliverJobResultResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListReceiptsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListReceiptsResponse(_message.Message):
    __slots__ = ("receipts", "provider_key_fingerprint")
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    receipts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Receipt]
    provider_key_fingerprint: str
    def __init__(self, receipts: _Optional[_Iterable[_Union[_common_pb2.Receipt, _Mapping]]] = ..., provider_key_fingerprint: _Optional[str] = ...) -> None: ...
