"""A session's results and kept image as ResultChunks: the files GetResult and GetImage send, cut to message size."""

from __future__ import annotations

from collections.abc import Iterator

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.errors import InvalidInput, PreconditionFailed
from medsam2.io.labels import LabelValues, label_map, label_map_json
from medsam2.server.dicom_results import DicomResults, build_dicom_results, require_dicom_source
from medsam2.server.request_checks import MIN_CHUNK_BYTES
from medsam2.server.results import encode_labels, encode_object_masks, nifti_gz_pieces
from medsam2.server.sessions import SessionEntry

DEFAULT_CHUNK_BYTES = 1 << 20
CHUNK_OVERHEAD_BYTES = 4096
"""Room left in a gRPC message beside a ResultChunk's data (offset, sizes, shape, object ids)."""
IMAGE_GZIP_LEVEL = 1
"""GetImage's gzip level: the fastest, as a viewer waits for the image (a CT compresses about 2x even so)."""
LABEL_VALUES = {
    pb.LABEL_VALUES_UNSPECIFIED: LabelValues.RANKS,
    pb.LABEL_VALUES_RANKS: LabelValues.RANKS,
    pb.LABEL_VALUES_OBJECT_IDS: LabelValues.OBJECT_IDS,
}
LABEL_FORMATS = {pb.RESULT_FORMAT_NPZ: "npz", pb.RESULT_FORMAT_NIFTI_GZ: "nifti_gz", pb.RESULT_FORMAT_RAW_LABELS: "raw"}
RESULT_FORMATS = (
    *LABEL_FORMATS,
    pb.RESULT_FORMAT_OBJECT_MASKS_NPZ,
    pb.RESULT_FORMAT_DICOM_SEG,
    pb.RESULT_FORMAT_DICOM_SR,
)


def check_format(fmt: pb.ResultFormat) -> None:
    """Refuse a result format this server does not make."""
    if fmt not in RESULT_FORMATS:
        raise InvalidInput(f"result format {fmt} is not known: use {sorted(pb.ResultFormat.keys())[1:]}")


def chunk_size(chunk_bytes: int, max_message_bytes: int) -> int:
    """Bytes per ResultChunk: the client's choice (or 1 MiB), never more than a gRPC message may carry."""
    size = chunk_bytes or DEFAULT_CHUNK_BYTES
    if max_message_bytes:
        size = min(size, max(max_message_bytes - CHUNK_OVERHEAD_BYTES, MIN_CHUNK_BYTES))
    return size


def dicom_results(entry: SessionEntry, model_sha: str) -> DicomResults:
    """The session's SEG and SR, built once per state of the results (so the SR always names that SEG)."""
    cached = entry.replies.get("dicom")
    if cached is not None and cached[0] == entry.results.version:
        return cached[1]
    require_dicom_source(entry.study)
    masks = {i: m for i, m in entry.results.masks().items() if m.any()}
    built = build_dicom_results(masks, entry.study, entry.results.shape, entry.objects, model_sha)
    entry.replies["dicom"] = (entry.results.version, built)
    return built


def result_chunks(
    entry: SessionEntry, fmt: pb.ResultFormat, values: pb.LabelValues, size: int, model_sha: str
) -> Iterator[pb.ResultChunk]:
    """The session's result in format ``fmt`` (``values``: the label values) as chunks of ``size``.

    The file is made when called (under the caller's hold on the session); the chunks are cut as they are sent.
    """
    label_entries: list[pb.LabelEntry] = []
    study = entry.study
    if fmt in (pb.RESULT_FORMAT_DICOM_SEG, pb.RESULT_FORMAT_DICOM_SR):
        built = dicom_results(entry, model_sha)
        data = built.seg_bytes if fmt == pb.RESULT_FORMAT_DICOM_SEG else built.sr_bytes
        object_ids = entry.results.object_ids
        shape = list(entry.results.shape)
    elif fmt == pb.RESULT_FORMAT_OBJECT_MASKS_NPZ:
        masks = entry.results.masks()
        data, object_ids, shape = (
            encode_object_masks(masks, study.spacing),
            sorted(masks),
            list(entry.results.shape),
        )
    else:
        label_values = LABEL_VALUES[values]
        labels = entry.results.labels(label_values)
        object_ids, shape = entry.results.object_ids, list(labels.shape)
        entries = _label_map(entry, object_ids, label_values)
        data = encode_labels(
            labels,
            study.spacing,
            study.geometry,
            LABEL_FORMATS[fmt],
            label_map=label_map_json(entries, label_values),
        )
        label_entries = [
            pb.LabelEntry(value=e.value, object_id=e.object_id, name=e.name, colour_rgb=list(e.colour)) for e in entries
        ]
    return _chunks(data, size, format=fmt, shape=shape, object_ids=object_ids, labels=label_entries)


def image_chunks(entry: SessionEntry, size: int) -> Iterator[pb.ResultChunk]:
    """The session's kept image as a NIfTI-gz file in chunks of ``size``.

    The kept image is never modified, so it is read without the session's lock: a viewer can fetch it while a
    propagation runs. It is compressed slab by slab as it is sent, so a call holds about one chunk, not a copy of
    the study; the file's size (each chunk states it) is counted once per session.
    """
    image = entry.image
    if image is None:
        raise PreconditionFailed(
            f"session {entry.session_id} did not keep its image: open the study with header.keep_image "
            "to view it (the page does so for PACS studies; an upload's client already has its voxels)",
            field="session_id",
            reason="IMAGE_NOT_KEPT",
        )
    spacing, geometry = entry.study.spacing, entry.study.geometry
    with entry.image_lock:
        if not entry.image_file_bytes:
            pieces = nifti_gz_pieces(image, spacing, geometry, compresslevel=IMAGE_GZIP_LEVEL)
            entry.image_file_bytes = sum(len(piece) for piece in pieces)
        total = entry.image_file_bytes
    return _stream_chunks(
        nifti_gz_pieces(image, spacing, geometry, compresslevel=IMAGE_GZIP_LEVEL),
        total,
        size,
        format=pb.RESULT_FORMAT_NIFTI_GZ,
        shape=list(image.shape[:3]),
    )


def _label_map(entry: SessionEntry, object_ids: list[int], values: LabelValues) -> list:
    """The label map of the session's objects: values, and the names and colours their SEG segments get."""
    specs = {i: entry.objects[i] for i in object_ids if i in entry.objects}
    return label_map(
        object_ids,
        values,
        names={i: s.label for i, s in specs.items()},
        colours={i: s.colour for i, s in specs.items()},
    )


def _chunks(
    data: bytes,
    chunk_bytes: int,
    *,
    format: pb.ResultFormat,
    shape: list[int],
    object_ids: list[int] | None = None,
    labels: list[pb.LabelEntry] | None = None,
) -> Iterator[pb.ResultChunk]:
    """``data`` as ResultChunks of ``chunk_bytes``, each describing the whole; one if empty."""
    size = chunk_bytes
    for offset in range(0, max(len(data), 1), size):
        yield pb.ResultChunk(
            data=data[offset : offset + size],
            offset=offset,
            total_bytes=len(data),
            format=format,
            shape=shape,
            object_ids=object_ids or [],
            labels=labels or [],
        )


def _stream_chunks(
    pieces: Iterator[bytes], total: int, size: int, *, format: pb.ResultFormat, shape: list[int]
) -> Iterator[pb.ResultChunk]:
    """A file made as ``pieces`` of ``total`` bytes as ResultChunks of ``size``, each sent once it is full."""
    buffer = bytearray()
    offset = 0
    for piece in pieces:
        buffer += piece
        while len(buffer) >= size:
            yield pb.ResultChunk(
                data=bytes(buffer[:size]), offset=offset, total_bytes=total, format=format, shape=shape
            )
            del buffer[:size]
            offset += size
    if offset + len(buffer) != total:
        raise RuntimeError(f"the image file came out at {offset + len(buffer)} bytes, not the {total} announced")
    if buffer or not offset:
        yield pb.ResultChunk(data=bytes(buffer), offset=offset, total_bytes=total, format=format, shape=shape)
