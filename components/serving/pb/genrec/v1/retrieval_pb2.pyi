from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class History(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SimilarUsersRequest(_message.Message):
    __slots__ = ("user_id", "history", "z", "v", "exclude_item", "exclude_user")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    V_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_USER_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history: History
    z: int
    v: int
    exclude_item: str
    exclude_user: str
    def __init__(self, user_id: _Optional[str] = ..., history: _Optional[_Union[History, _Mapping]] = ..., z: _Optional[int] = ..., v: _Optional[int] = ..., exclude_item: _Optional[str] = ..., exclude_user: _Optional[str] = ...) -> None: ...

class Neighbor(_message.Message):
    __slots__ = ("user_id", "score", "path", "item_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    score: float
    path: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., score: _Optional[float] = ..., path: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class SimilarUsersResponse(_message.Message):
    __slots__ = ("users", "index_ref")
    USERS_FIELD_NUMBER: _ClassVar[int]
    INDEX_REF_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[Neighbor]
    index_ref: str
    def __init__(self, users: _Optional[_Iterable[_Union[Neighbor, _Mapping]]] = ..., index_ref: _Optional[str] = ...) -> None: ...
