from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HeadOptions(_message.Message):
    __slots__ = ("use_retrieval",)
    USE_RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    use_retrieval: bool
    def __init__(self, use_retrieval: _Optional[bool] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("history", "k", "beam", "user_id", "heads", "skip_unknown")
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    BEAM_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    SKIP_UNKNOWN_FIELD_NUMBER: _ClassVar[int]
    history: _containers.RepeatedScalarFieldContainer[str]
    k: int
    beam: int
    user_id: str
    heads: HeadOptions
    skip_unknown: bool
    def __init__(self, history: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., beam: _Optional[int] = ..., user_id: _Optional[str] = ..., heads: _Optional[_Union[HeadOptions, _Mapping]] = ..., skip_unknown: _Optional[bool] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("item_ids", "scores", "fallback_used", "retrieval_used", "retrieval_unavailable", "skipped_items", "model_ref")
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_USED_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_USED_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_REF_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.RepeatedScalarFieldContainer[float]
    fallback_used: bool
    retrieval_used: bool
    retrieval_unavailable: bool
    skipped_items: _containers.RepeatedScalarFieldContainer[str]
    model_ref: str
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ..., scores: _Optional[_Iterable[float]] = ..., fallback_used: _Optional[bool] = ..., retrieval_used: _Optional[bool] = ..., retrieval_unavailable: _Optional[bool] = ..., skipped_items: _Optional[_Iterable[str]] = ..., model_ref: _Optional[str] = ...) -> None: ...

class RecommendBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecommendRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecommendRequest, _Mapping]]] = ...) -> None: ...

class RecommendBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[RecommendResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[RecommendResponse, _Mapping]]] = ...) -> None: ...
