from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Alert(_message.Message):
    __slots__ = ("uuid", "output", "priority", "rule", "time", "output_fields_json", "source", "tags", "hostname")
    UUID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELDS_JSON_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    output: str
    priority: str
    rule: str
    time: str
    output_fields_json: bytes
    source: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    hostname: str
    def __init__(self, uuid: _Optional[str] = ..., output: _Optional[str] = ..., priority: _Optional[str] = ..., rule: _Optional[str] = ..., time: _Optional[str] = ..., output_fields_json: _Optional[bytes] = ..., source: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., hostname: _Optional[str] = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("batch_id", "alerts")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    def __init__(self, batch_id: _Optional[int] = ..., alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("index", "field", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    field: str
    message: str
    def __init__(self, index: _Optional[int] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PublishAck(_message.Message):
    __slots__ = ("batch_id", "accepted", "duplicates", "rejected")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    accepted: int
    duplicates: int
    rejected: _containers.RepeatedCompositeFieldContainer[Rejection]
    def __init__(self, batch_id: _Optional[int] = ..., accepted: _Optional[int] = ..., duplicates: _Optional[int] = ..., rejected: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("min_priority",)
    MIN_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    min_priority: str
    def __init__(self, min_priority: _Optional[str] = ...) -> None: ...

class LocalRulesRequest(_message.Message):
    __slots__ = ("known_version",)
    KNOWN_VERSION_FIELD_NUMBER: _ClassVar[int]
    known_version: int
    def __init__(self, known_version: _Optional[int] = ...) -> None: ...

class LocalRulesReply(_message.Message):
    __slots__ = ("version", "changed", "yaml")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    version: int
    changed: bool
    yaml: str
    def __init__(self, version: _Optional[int] = ..., changed: _Optional[bool] = ..., yaml: _Optional[str] = ...) -> None: ...
