from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_UINT8: _ClassVar[DataType]
    DATA_TYPE_INT16: _ClassVar[DataType]
    DATA_TYPE_UINT16: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]

class StudyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STUDY_KIND_UNSPECIFIED: _ClassVar[StudyKind]
    STUDY_KIND_VOLUME: _ClassVar[StudyKind]
    STUDY_KIND_VIDEO: _ClassVar[StudyKind]

class MaskEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MASK_ENCODING_UNSPECIFIED: _ClassVar[MaskEncoding]
    MASK_ENCODING_BITPACKED: _ClassVar[MaskEncoding]
    MASK_ENCODING_RLE: _ClassVar[MaskEncoding]

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_FORWARD: _ClassVar[Direction]
    DIRECTION_BACKWARD: _ClassVar[Direction]
    DIRECTION_BOTH: _ClassVar[Direction]

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_MEDSAM2_3D: _ClassVar[Protocol]
    PROTOCOL_IN_STATE: _ClassVar[Protocol]

class LabelValues(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_VALUES_UNSPECIFIED: _ClassVar[LabelValues]
    LABEL_VALUES_RANKS: _ClassVar[LabelValues]
    LABEL_VALUES_OBJECT_IDS: _ClassVar[LabelValues]

class ResultFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_FORMAT_UNSPECIFIED: _ClassVar[ResultFormat]
    RESULT_FORMAT_NPZ: _ClassVar[ResultFormat]
    RESULT_FORMAT_NIFTI_GZ: _ClassVar[ResultFormat]
    RESULT_FORMAT_RAW_LABELS: _ClassVar[ResultFormat]
    RESULT_FORMAT_DICOM_SEG: _ClassVar[ResultFormat]
    RESULT_FORMAT_DICOM_SR: _ClassVar[ResultFormat]
    RESULT_FORMAT_OBJECT_MASKS_NPZ: _ClassVar[ResultFormat]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_UINT8: DataType
DATA_TYPE_INT16: DataType
DATA_TYPE_UINT16: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType
STUDY_KIND_UNSPECIFIED: StudyKind
STUDY_KIND_VOLUME: StudyKind
STUDY_KIND_VIDEO: StudyKind
MASK_ENCODING_UNSPECIFIED: MaskEncoding
MASK_ENCODING_BITPACKED: MaskEncoding
MASK_ENCODING_RLE: MaskEncoding
DIRECTION_UNSPECIFIED: Direction
DIRECTION_FORWARD: Direction
DIRECTION_BACKWARD: Direction
DIRECTION_BOTH: Direction
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_MEDSAM2_3D: Protocol
PROTOCOL_IN_STATE: Protocol
LABEL_VALUES_UNSPECIFIED: LabelValues
LABEL_VALUES_RANKS: LabelValues
LABEL_VALUES_OBJECT_IDS: LabelValues
RESULT_FORMAT_UNSPECIFIED: ResultFormat
RESULT_FORMAT_NPZ: ResultFormat
RESULT_FORMAT_NIFTI_GZ: ResultFormat
RESULT_FORMAT_RAW_LABELS: ResultFormat
RESULT_FORMAT_DICOM_SEG: ResultFormat
RESULT_FORMAT_DICOM_SR: ResultFormat
RESULT_FORMAT_OBJECT_MASKS_NPZ: ResultFormat

class Preprocessing(_message.Message):
    __slots__ = ("preset", "window_width", "window_level")
    PRESET_FIELD_NUMBER: _ClassVar[int]
    WINDOW_WIDTH_FIELD_NUMBER: _ClassVar[int]
    WINDOW_LEVEL_FIELD_NUMBER: _ClassVar[int]
    preset: str
    window_width: float
    window_level: float
    def __init__(self, preset: _Optional[str] = ..., window_width: _Optional[float] = ..., window_level: _Optional[float] = ...) -> None: ...

class PostProcessing(_message.Message):
    __slots__ = ("largest_component", "fill_hole_area", "non_overlapping_objects", "binarize_memory")
    LARGEST_COMPONENT_FIELD_NUMBER: _ClassVar[int]
    FILL_HOLE_AREA_FIELD_NUMBER: _ClassVar[int]
    NON_OVERLAPPING_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    BINARIZE_MEMORY_FIELD_NUMBER: _ClassVar[int]
    largest_component: bool
    fill_hole_area: int
    non_overlapping_objects: bool
    binarize_memory: bool
    def __init__(self, largest_component: _Optional[bool] = ..., fill_hole_area: _Optional[int] = ..., non_overlapping_objects: _Optional[bool] = ..., binarize_memory: _Optional[bool] = ...) -> None: ...

class PacsReference(_message.Message):
    __slots__ = ("endpoint", "study_uid", "series_uid")
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STUDY_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_UID_FIELD_NUMBER: _ClassVar[int]
    endpoint: str
    study_uid: str
    series_uid: str
    def __init__(self, endpoint: _Optional[str] = ..., study_uid: _Optional[str] = ..., series_uid: _Optional[str] = ...) -> None: ...

class PatientGeometry(_message.Message):
    __slots__ = ("origin", "row_direction", "column_direction", "slice_step")
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    ROW_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    COLUMN_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    SLICE_STEP_FIELD_NUMBER: _ClassVar[int]
    origin: _containers.RepeatedScalarFieldContainer[float]
    row_direction: _containers.RepeatedScalarFieldContainer[float]
    column_direction: _containers.RepeatedScalarFieldContainer[float]
    slice_step: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, origin: _Optional[_Iterable[float]] = ..., row_direction: _Optional[_Iterable[float]] = ..., column_direction: _Optional[_Iterable[float]] = ..., slice_step: _Optional[_Iterable[float]] = ...) -> None: ...

class StudyHeader(_message.Message):
    __slots__ = ("shape", "dtype", "spacing_mm", "preprocessing", "kind", "label", "pacs", "modality", "geometry", "frame_of_reference_uid", "study_uid", "series_uid", "sop_instance_uids", "external_id", "request_id", "keep_image", "postprocessing")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSING_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PACS_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    FRAME_OF_REFERENCE_UID_FIELD_NUMBER: _ClassVar[int]
    STUDY_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UIDS_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEEP_IMAGE_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESSING_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DataType
    spacing_mm: _containers.RepeatedScalarFieldContainer[float]
    preprocessing: Preprocessing
    kind: StudyKind
    label: str
    pacs: PacsReference
    modality: str
    geometry: PatientGeometry
    frame_of_reference_uid: str
    study_uid: str
    series_uid: str
    sop_instance_uids: _containers.RepeatedScalarFieldContainer[str]
    external_id: str
    request_id: str
    keep_image: bool
    postprocessing: PostProcessing
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., spacing_mm: _Optional[_Iterable[float]] = ..., preprocessing: _Optional[_Union[Preprocessing, _Mapping]] = ..., kind: _Optional[_Union[StudyKind, str]] = ..., label: _Optional[str] = ..., pacs: _Optional[_Union[PacsReference, _Mapping]] = ..., modality: _Optional[str] = ..., geometry: _Optional[_Union[PatientGeometry, _Mapping]] = ..., frame_of_reference_uid: _Optional[str] = ..., study_uid: _Optional[str] = ..., series_uid: _Optional[str] = ..., sop_instance_uids: _Optional[_Iterable[str]] = ..., external_id: _Optional[str] = ..., request_id: _Optional[str] = ..., keep_image: _Optional[bool] = ..., postprocessing: _Optional[_Union[PostProcessing, _Mapping]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("header", "voxels")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    VOXELS_FIELD_NUMBER: _ClassVar[int]
    header: StudyHeader
    voxels: bytes
    def __init__(self, header: _Optional[_Union[StudyHeader, _Mapping]] = ..., voxels: _Optional[bytes] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "shape", "spacing_mm", "object_ids", "state_bytes", "idle_seconds", "expires_in_seconds", "label", "backend", "busy", "modality", "geometry", "frame_of_reference_uid", "study_uid", "series_uid", "external_id", "preset", "dicom_results", "model_version", "durable", "history", "model", "image_kept", "postprocessing", "sop_instance_uids")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    GEOMETRY_FIELD_NUMBER: _ClassVar[int]
    FRAME_OF_REFERENCE_UID_FIELD_NUMBER: _ClassVar[int]
    STUDY_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_UID_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_ID_FIELD_NUMBER: _ClassVar[int]
    PRESET_FIELD_NUMBER: _ClassVar[int]
    DICOM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_KEPT_FIELD_NUMBER: _ClassVar[int]
    POSTPROCESSING_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UIDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    spacing_mm: _containers.RepeatedScalarFieldContainer[float]
    object_ids: _containers.RepeatedScalarFieldContainer[int]
    state_bytes: int
    idle_seconds: float
    expires_in_seconds: float
    label: str
    backend: str
    busy: bool
    modality: str
    geometry: PatientGeometry
    frame_of_reference_uid: str
    study_uid: str
    series_uid: str
    external_id: str
    preset: str
    dicom_results: bool
    model_version: str
    durable: bool
    history: _containers.RepeatedScalarFieldContainer[str]
    model: ModelInfo
    image_kept: bool
    postprocessing: PostProcessing
    sop_instance_uids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., spacing_mm: _Optional[_Iterable[float]] = ..., object_ids: _Optional[_Iterable[int]] = ..., state_bytes: _Optional[int] = ..., idle_seconds: _Optional[float] = ..., expires_in_seconds: _Optional[float] = ..., label: _Optional[str] = ..., backend: _Optional[str] = ..., busy: _Optional[bool] = ..., modality: _Optional[str] = ..., geometry: _Optional[_Union[PatientGeometry, _Mapping]] = ..., frame_of_reference_uid: _Optional[str] = ..., study_uid: _Optional[str] = ..., series_uid: _Optional[str] = ..., external_id: _Optional[str] = ..., preset: _Optional[str] = ..., dicom_results: _Optional[bool] = ..., model_version: _Optional[str] = ..., durable: _Optional[bool] = ..., history: _Optional[_Iterable[str]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., image_kept: _Optional[bool] = ..., postprocessing: _Optional[_Union[PostProcessing, _Mapping]] = ..., sop_instance_uids: _Optional[_Iterable[str]] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x0", "y0", "x1", "y1")
    X0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    x0: float
    y0: float
    x1: float
    y1: float
    def __init__(self, x0: _Optional[float] = ..., y0: _Optional[float] = ..., x1: _Optional[float] = ..., y1: _Optional[float] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y", "positive")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    positive: bool
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., positive: _Optional[bool] = ...) -> None: ...

class Mask(_message.Message):
    __slots__ = ("rows", "columns", "encoding", "data")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    columns: int
    encoding: MaskEncoding
    data: bytes
    def __init__(self, rows: _Optional[int] = ..., columns: _Optional[int] = ..., encoding: _Optional[_Union[MaskEncoding, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CodedConcept(_message.Message):
    __slots__ = ("value", "scheme", "meaning")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCHEME_FIELD_NUMBER: _ClassVar[int]
    MEANING_FIELD_NUMBER: _ClassVar[int]
    value: str
    scheme: str
    meaning: str
    def __init__(self, value: _Optional[str] = ..., scheme: _Optional[str] = ..., meaning: _Optional[str] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("label", "colour_rgb", "category", "type")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COLOUR_RGB_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    label: str
    colour_rgb: _containers.RepeatedScalarFieldContainer[int]
    category: CodedConcept
    type: CodedConcept
    def __init__(self, label: _Optional[str] = ..., colour_rgb: _Optional[_Iterable[int]] = ..., category: _Optional[_Union[CodedConcept, _Mapping]] = ..., type: _Optional[_Union[CodedConcept, _Mapping]] = ...) -> None: ...

class AddPromptRequest(_message.Message):
    __slots__ = ("session_id", "object_id", "slice", "box", "points", "mask", "keep_previous_points", "object_info", "request_id", "encoding", "correction")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SLICE_FIELD_NUMBER: _ClassVar[int]
    BOX_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    KEEP_PREVIOUS_POINTS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_INFO_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    object_id: int
    slice: int
    box: Box
    points: _containers.RepeatedCompositeFieldContainer[Point]
    mask: Mask
    keep_previous_points: bool
    object_info: ObjectInfo
    request_id: str
    encoding: MaskEncoding
    correction: bool
    def __init__(self, session_id: _Optional[str] = ..., object_id: _Optional[int] = ..., slice: _Optional[int] = ..., box: _Optional[_Union[Box, _Mapping]] = ..., points: _Optional[_Iterable[_Union[Point, _Mapping]]] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., keep_previous_points: _Optional[bool] = ..., object_info: _Optional[_Union[ObjectInfo, _Mapping]] = ..., request_id: _Optional[str] = ..., encoding: _Optional[_Union[MaskEncoding, str]] = ..., correction: _Optional[bool] = ...) -> None: ...

class PropagateRequest(_message.Message):
    __slots__ = ("session_id", "direction", "start_slice", "first_slice", "last_slice", "protocol", "encoding")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    START_SLICE_FIELD_NUMBER: _ClassVar[int]
    FIRST_SLICE_FIELD_NUMBER: _ClassVar[int]
    LAST_SLICE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    direction: Direction
    start_slice: int
    first_slice: int
    last_slice: int
    protocol: Protocol
    encoding: MaskEncoding
    def __init__(self, session_id: _Optional[str] = ..., direction: _Optional[_Union[Direction, str]] = ..., start_slice: _Optional[int] = ..., first_slice: _Optional[int] = ..., last_slice: _Optional[int] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., encoding: _Optional[_Union[MaskEncoding, str]] = ...) -> None: ...

class ObjectMask(_message.Message):
    __slots__ = ("object_id", "mask", "object_score")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    OBJECT_SCORE_FIELD_NUMBER: _ClassVar[int]
    object_id: int
    mask: Mask
    object_score: float
    def __init__(self, object_id: _Optional[int] = ..., mask: _Optional[_Union[Mask, _Mapping]] = ..., object_score: _Optional[float] = ...) -> None: ...

class SliceResult(_message.Message):
    __slots__ = ("slice", "objects", "done", "total", "final")
    SLICE_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    PASS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    slice: int
    objects: _containers.RepeatedCompositeFieldContainer[ObjectMask]
    done: int
    total: int
    final: bool
    def __init__(self, slice: _Optional[int] = ..., objects: _Optional[_Iterable[_Union[ObjectMask, _Mapping]]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., final: _Optional[bool] = ..., **kwargs) -> None: ...

class LabelEntry(_message.Message):
    __slots__ = ("value", "object_id", "name", "colour_rgb")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLOUR_RGB_FIELD_NUMBER: _ClassVar[int]
    value: int
    object_id: int
    name: str
    colour_rgb: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, value: _Optional[int] = ..., object_id: _Optional[int] = ..., name: _Optional[str] = ..., colour_rgb: _Optional[_Iterable[int]] = ...) -> None: ...

class GetResultRequest(_message.Message):
    __slots__ = ("session_id", "format", "chunk_bytes", "label_values")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    LABEL_VALUES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    format: ResultFormat
    chunk_bytes: int
    label_values: LabelValues
    def __init__(self, session_id: _Optional[str] = ..., format: _Optional[_Union[ResultFormat, str]] = ..., chunk_bytes: _Optional[int] = ..., label_values: _Optional[_Union[LabelValues, str]] = ...) -> None: ...

class GetSlicesRequest(_message.Message):
    __slots__ = ("session_id", "first_slice", "last_slice", "encoding")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SLICE_FIELD_NUMBER: _ClassVar[int]
    LAST_SLICE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    first_slice: int
    last_slice: int
    encoding: MaskEncoding
    def __init__(self, session_id: _Optional[str] = ..., first_slice: _Optional[int] = ..., last_slice: _Optional[int] = ..., encoding: _Optional[_Union[MaskEncoding, str]] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("data", "offset", "total_bytes", "format", "shape", "object_ids", "labels")
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    offset: int
    total_bytes: int
    format: ResultFormat
    shape: _containers.RepeatedScalarFieldContainer[int]
    object_ids: _containers.RepeatedScalarFieldContainer[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabelEntry]
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_bytes: _Optional[int] = ..., format: _Optional[_Union[ResultFormat, str]] = ..., shape: _Optional[_Iterable[int]] = ..., object_ids: _Optional[_Iterable[int]] = ..., labels: _Optional[_Iterable[_Union[LabelEntry, _Mapping]]] = ...) -> None: ...

class GetImageRequest(_message.Message):
    __slots__ = ("session_id", "chunk_bytes")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    chunk_bytes: int
    def __init__(self, session_id: _Optional[str] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class ResetObjectsRequest(_message.Message):
    __slots__ = ("session_id", "object_ids", "all")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    object_ids: _containers.RepeatedScalarFieldContainer[int]
    all: bool
    def __init__(self, session_id: _Optional[str] = ..., object_ids: _Optional[_Iterable[int]] = ..., all: _Optional[bool] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[Session]
    def __init__(self, sessions: _Optional[_Iterable[_Union[Session, _Mapping]]] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("closed",)
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    closed: bool
    def __init__(self, closed: _Optional[bool] = ...) -> None: ...

class StoreResultRequest(_message.Message):
    __slots__ = ("session_id", "endpoint", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    endpoint: str
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class StoreResultResponse(_message.Message):
    __slots__ = ("study_uid", "seg_series_uid", "seg_sop_instance_uid", "sr_series_uid", "sr_sop_instance_uid")
    STUDY_UID_FIELD_NUMBER: _ClassVar[int]
    SEG_SERIES_UID_FIELD_NUMBER: _ClassVar[int]
    SEG_SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SR_SERIES_UID_FIELD_NUMBER: _ClassVar[int]
    SR_SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    study_uid: str
    seg_series_uid: str
    seg_sop_instance_uid: str
    sr_series_uid: str
    sr_sop_instance_uid: str
    def __init__(self, study_uid: _Optional[str] = ..., seg_series_uid: _Optional[str] = ..., seg_sop_instance_uid: _Optional[str] = ..., sr_series_uid: _Optional[str] = ..., sr_sop_instance_uid: _Optional[str] = ...) -> None: ...

class SaveAnnotationRequest(_message.Message):
    __slots__ = ("session_id", "request_id", "case_name")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CASE_NAME_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    request_id: str
    case_name: str
    def __init__(self, session_id: _Optional[str] = ..., request_id: _Optional[str] = ..., case_name: _Optional[str] = ...) -> None: ...

class SaveAnnotationResponse(_message.Message):
    __slots__ = ("case_file", "folder", "sha256", "size_bytes", "object_ids", "model_version")
    CASE_FILE_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    case_file: str
    folder: str
    sha256: str
    size_bytes: int
    object_ids: _containers.RepeatedScalarFieldContainer[int]
    model_version: str
    def __init__(self, case_file: _Optional[str] = ..., folder: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., object_ids: _Optional[_Iterable[int]] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetModelVersionRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    def __init__(self, version: _Optional[int] = ...) -> None: ...

class ServerLimits(_message.Message):
    __slots__ = ("max_sessions", "max_study_voxels", "max_state_bytes", "session_ttl_seconds", "max_message_bytes", "max_points")
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_STUDY_VOXELS_FIELD_NUMBER: _ClassVar[int]
    MAX_STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SESSION_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_POINTS_FIELD_NUMBER: _ClassVar[int]
    max_sessions: int
    max_study_voxels: int
    max_state_bytes: int
    session_ttl_seconds: float
    max_message_bytes: int
    max_points: int
    def __init__(self, max_sessions: _Optional[int] = ..., max_study_voxels: _Optional[int] = ..., max_state_bytes: _Optional[int] = ..., session_ttl_seconds: _Optional[float] = ..., max_message_bytes: _Optional[int] = ..., max_points: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("version", "checkpoint_sha256", "short_sha", "untrained")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SHA256_FIELD_NUMBER: _ClassVar[int]
    SHORT_SHA_FIELD_NUMBER: _ClassVar[int]
    UNTRAINED_FIELD_NUMBER: _ClassVar[int]
    version: int
    checkpoint_sha256: str
    short_sha: str
    untrained: bool
    def __init__(self, version: _Optional[int] = ..., checkpoint_sha256: _Optional[str] = ..., short_sha: _Optional[str] = ..., untrained: _Optional[bool] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("server_version", "backend", "model", "limits", "presets", "pacs_endpoints", "result_formats", "capabilities", "api_version", "precision", "model_versions")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    PACS_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FORMATS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    backend: str
    model: ModelInfo
    limits: ServerLimits
    presets: _containers.RepeatedScalarFieldContainer[str]
    pacs_endpoints: _containers.RepeatedScalarFieldContainer[str]
    result_formats: _containers.RepeatedScalarFieldContainer[ResultFormat]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    api_version: str
    precision: str
    model_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, server_version: _Optional[str] = ..., backend: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., limits: _Optional[_Union[ServerLimits, _Mapping]] = ..., presets: _Optional[_Iterable[str]] = ..., pacs_endpoints: _Optional[_Iterable[str]] = ..., result_formats: _Optional[_Iterable[_Union[ResultFormat, str]]] = ..., capabilities: _Optional[_Iterable[str]] = ..., api_version: _Optional[str] = ..., precision: _Optional[str] = ..., model_versions: _Optional[_Iterable[int]] = ...) -> None: ...
