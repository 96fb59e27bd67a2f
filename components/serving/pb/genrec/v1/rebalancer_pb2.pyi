from components.serving.pb.genrec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RebalanceRequest(_message.Message):
    __slots__ = ("codebook_ref", "dataset_ref", "split_ratio", "max_splits", "balance_weight", "levels")
    CODEBOOK_REF_FIELD_NUMBER: _ClassVar[int]
    DATASET_REF_FIELD_NUMBER: _ClassVar[int]
    SPLIT_RATIO_FIELD_NUMBER: _ClassVar[int]
    MAX_SPLITS_FIELD_NUMBER: _ClassVar[int]
    BALANCE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    codebook_ref: str
    dataset_ref: str
    split_ratio: float
    max_splits: int
    balance_weight: float
    levels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, codebook_ref: _Optional[str] = ..., dataset_ref: _Optional[str] = ..., split_ratio: _Optional[float] = ..., max_splits: _Optional[int] = ..., balance_weight: _Optional[float] = ..., levels: _Optional[_Iterable[int]] = ...) -> None: ...

class RebalanceResponse(_message.Message):
    __slots__ = ("codebook_ref", "before", "after")
    CODEBOOK_REF_FIELD_NUMBER: _ClassVar[int]
    BEFORE_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    codebook_ref: str
    before: _common_pb2.Stats
    after: _common_pb2.Stats
    def __init__(self, codebook_ref: _Optional[str] = ..., before: _Optional[_Union[_common_pb2.Stats, _Mapping]] = ..., after: _Optional[_Union[_common_pb2.Stats, _Mapping]] = ...) -> None: ...
