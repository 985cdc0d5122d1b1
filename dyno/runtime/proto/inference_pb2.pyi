from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Request(_message.Message):
    __slots__ = ("request_id", "model", "plan_hash", "cut", "meta", "payload", "top_k", "want_logits")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PLAN_HASH_FIELD_NUMBER: _ClassVar[int]
    CUT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    WANT_LOGITS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    model: str
    plan_hash: str
    cut: int
    meta: bytes
    payload: bytes
    top_k: int
    want_logits: bool
    def __init__(self, request_id: _Optional[int] = ..., model: _Optional[str] = ..., plan_hash: _Optional[str] = ..., cut: _Optional[int] = ..., meta: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., top_k: _Optional[int] = ..., want_logits: _Optional[bool] = ...) -> None: ...

class Reply(_message.Message):
    __slots__ = ("request_id", "classes", "scores", "logits", "queue_ms", "compute_ms", "batch", "load", "queued", "headroom", "pressure", "cpu_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    HEADROOM_FIELD_NUMBER: _ClassVar[int]
    PRESSURE_FIELD_NUMBER: _ClassVar[int]
    CPU_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    classes: _containers.RepeatedScalarFieldContainer[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    logits: _containers.RepeatedScalarFieldContainer[float]
    queue_ms: float
    compute_ms: float
    batch: int
    load: float
    queued: int
    headroom: float
    pressure: float
    cpu_ms: float
    def __init__(self, request_id: _Optional[int] = ..., classes: _Optional[_Iterable[int]] = ..., scores: _Optional[_Iterable[float]] = ..., logits: _Optional[_Iterable[float]] = ..., queue_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., batch: _Optional[int] = ..., load: _Optional[float] = ..., queued: _Optional[int] = ..., headroom: _Optional[float] = ..., pressure: _Optional[float] = ..., cpu_ms: _Optional[float] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthReply(_message.Message):
    __slots__ = ("status", "load", "in_flight")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        UNKNOWN: _ClassVar[HealthReply.Status]
        SERVING: _ClassVar[HealthReply.Status]
        DRAINING: _ClassVar[HealthReply.Status]
    UNKNOWN: HealthReply.Status
    SERVING: HealthReply.Status
    DRAINING: HealthReply.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    status: HealthReply.Status
    load: float
    in_flight: int
    def __init__(self, status: _Optional[_Union[HealthReply.Status, str]] = ..., load: _Optional[float] = ..., in_flight: _Optional[int] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CutInfo(_message.Message):
    __slots__ = ("id", "name", "shape", "served")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    served: bool
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., served: _Optional[bool] = ...) -> None: ...

class DescribeReply(_message.Message):
    __slots__ = ("model", "plan_hash", "cuts", "max_batch", "max_wait_ms", "max_message_bytes", "max_in_flight_per_client", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PLAN_HASH_FIELD_NUMBER: _ClassVar[int]
    CUTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    plan_hash: str
    cuts: _containers.RepeatedCompositeFieldContainer[CutInfo]
    max_batch: int
    max_wait_ms: float
    max_message_bytes: int
    max_in_flight_per_client: int
    version: str
    def __init__(self, model: _Optional[str] = ..., plan_hash: _Optional[str] = ..., cuts: _Optional[_Iterable[_Union[CutInfo, _Mapping]]] = ..., max_batch: _Optional[int] = ..., max_wait_ms: _Optional[float] = ..., max_message_bytes: _Optional[int] = ..., max_in_flight_per_client: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...
