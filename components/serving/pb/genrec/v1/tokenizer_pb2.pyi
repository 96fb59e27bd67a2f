from components.serving.pb.genrec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TokenizeRequest(_message.Message):
    __slots__ = ("codebook_ref", "item_ids")
    CODEBOOK_REF_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    codebook_ref: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, codebook_ref: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("codebook_ref", "sids")
    CODEBOOK_REF_FIELD_NUMBER: _ClassVar[int]
    SIDS_FIELD_NUMBER: _ClassVar[int]
    codebook_ref: str
    sids: _containers.RepeatedCompositeFieldContainer[_common_pb2.SemanticId]
    def __init__(self, codebook_ref: _Optional[str] = ..., sids: _Optional[_Iterable[_Union[_common_pb2.SemanticId, _Mapping]]] = ...) -> None: ...

class DetokenizeRequest(_message.Message):
    __slots__ = ("codebook_ref", "sids")
    CODEBOOK_REF_FIELD_NUMBER: _ClassVar[int]
    SIDS_FIELD_NUMBER: _ClassVar[int]
    codebook_ref: str
    sids: _containers.RepeatedCompositeFieldContainer[_common_pb2.SemanticId]
    def __init__(self, codebook_ref: _Optional[str] = ..., sids: _Optional[_Iterable[_Union[_common_pb2.SemanticId, _Mapping]]] = ...) -> None: ...

class DetokenizeResponse(_message.Message):
    __slots__ = ("codebook_ref", "item_ids", "found")
    CODEBOOK_REF_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    codebook_ref: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    found: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, codebook_ref: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ..., found: _Optional[_Iterable[bool]] = ...) -> None: ...

class NewItem(_message.Message):
    __slots__ = ("item_id", "fields")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    fields: _containers.ScalarMap[str, str]
    def __init__(self, item_id: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ...) -> None: ...

class AddItemsRequest(_message.Message):
    __slots__ = ("codebook_ref", "items", "request_id")
    CODEBOOK_REF_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    codebook_ref: str
    items: _containers.RepeatedCompositeFieldContainer[NewItem]
    request_id: str
    def __init__(self, codebook_ref: _Optional[str] = ..., items: _Optional[_Iterable[_Union[NewItem, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class AddItemsResponse(_message.Message):
    __slots__ = ("codebook_ref", "sids")
    CODEBOOK_REF_FIELD_NUMBER: _ClassVar[int]
    SIDS_FIELD_NUMBER: _ClassVar[int]
    codebook_ref: str
    sids: _containers.RepeatedCompositeFieldContainer[_common_pb2.SemanticId]
    def __init__(self, codebook_ref: _Optional[str] = ..., sids: _Optional[_Iterable[_Union[_common_pb2.SemanticId, _Mapping]]] = ...) -> None: ...

class CodebookStatsRequest(_message.Message):
    __slots__ = ("codebook_ref",)
    CODEBOOK_REF_FIELD_NUMBER: _ClassVar[int]
    codebook_ref: str
    def __init__(self, codebook_ref: _Optional[str] = ...) -> None: ...

class CodebookStatsResponse(_message.Message):
    __slots__ = ("codebook_ref", "stats")
    CODEBOOK_REF_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    codebook_ref: str
    stats: _common_pb2.Stats
    def __init__(self, codebook_ref: _Optional[str] = ..., stats: _Optional[_Union[_common_pb2.Stats, _Mapping]] = ...) -> None: ...
