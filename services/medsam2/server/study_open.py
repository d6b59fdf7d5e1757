"""Opening a study for a new session: its voxels (an upload or a PACS fetch), its windowing and its Session.

Everything the header asks for is checked before a voxel is transferred; the registry and the session store are
the servicer's to write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from medsam2.api.convert import geometry_from_pb, header_shape, header_spacing, identity_from_pb, postprocessing_from_pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.engine.session import (
    PostProcessingOptions,
    Session,
    StageBackend,
    TrackerOptions,
    open_session,
    session_postprocessing,
)
from medsam2.errors import InvalidInput, PreconditionFailed
from medsam2.imaging.windowing import Preset, Window, resolve_preset, to_uint8
from medsam2.io.dicom_pixels import to_grey_uint8
from medsam2.pacs.service import PacsStudies
from medsam2.server.durability import Durability
from medsam2.server.pacs_fetches import PacsFetchGuard, fetch_limits
from medsam2.server.sessions import SessionRegistry, StudyInfo
from medsam2.server.uploads import UploadGuard


class StudySources(Protocol):
    """What opening a study reads from the servicer (at call time: a test may swap its PACS)."""

    backend: StageBackend
    tracker_options: TrackerOptions
    pacs: PacsStudies | None
    uploads: UploadGuard
    pacs_fetches: PacsFetchGuard
    registry: SessionRegistry
    durability: Durability | None


@dataclass(frozen=True, slots=True)
class OpenedStudy:
    """A study ready to register: its Session, what the service knows of it, the kept image and the packed upload."""

    session: Session
    study: StudyInfo
    image: np.ndarray | None
    stored: Any
    """The study as the session store keeps it (None without a store)."""


def open_study(
    server: StudySources,
    header: pb.StudyHeader,
    receive: Callable[[], np.ndarray],
    *,
    context: object | None = None,
) -> OpenedStudy:
    """Open ``header``'s study: fetched from PACS, or the voxels ``receive`` returns (a PACS fetch ends when
    ``context``'s call does)."""
    is_video = header.kind == pb.STUDY_KIND_VIDEO
    window = None
    if header.preprocessing.window_width > 0:
        window = Window(header.preprocessing.window_width, header.preprocessing.window_level)
    preset = header.preprocessing.preset or ("none" if is_video else "auto")
    resolve_preset(preset, None, is_video=is_video)  # an unknown preset fails before any transfer
    postprocessing = _postprocessing(server, header, is_video)  # so does a bad post-processing request
    if header.HasField("pacs"):
        voxels, study = _fetch(server, header, is_video, context)
    else:
        # Everything the header states is checked before a voxel is received.
        study = _uploaded_study(header, header_shape(header), is_video)
        voxels = receive()
    modality = study.modality or None
    study.postprocessing = postprocessing
    study.preset = (
        f"window {window.width:g}/{window.level:g}"
        if window is not None
        else resolve_preset(preset, modality, voxels.dtype, is_video=is_video).value
    )
    stored = server.durability.pack_study(header, voxels) if server.durability is not None else None
    rgb = None
    if voxels.ndim == 4:  # an RGB video: the model sees RGB, everything else (results, display) its luma
        rgb, voxels = voxels, to_grey_uint8(voxels)
    slices = to_uint8(voxels, preset, window, modality=modality, is_video=is_video)
    study.postprocessing = postprocessing
    image = None
    if header.keep_image:
        # A viewer displays the intensities as loaded (window presets in HU), not the model's 8-bit input.
        image = voxels
        image.setflags(write=False)
    del voxels  # otherwise the raw upload is not needed once windowed (the store keeps it compressed)
    frames = rgb if rgb is not None and window is None and study.preset == Preset.NONE.value else slices
    session = open_session(server.backend, frames, server.tracker_options, postprocessing, video=is_video)
    del rgb, frames
    return OpenedStudy(session, study, image, stored)


def _postprocessing(server: StudySources, header: pb.StudyHeader, is_video: bool) -> PostProcessingOptions:
    """MedSAM2's defaults for the study's kind under the header's requests; a volume's hole filling defaults to
    the server's MEDSAM2_FILL_HOLE_AREA. Checked before any transfer, as the preset is."""
    requested = postprocessing_from_pb(header.postprocessing)
    return session_postprocessing(requested, video=is_video, fill_hole_area=server.tracker_options.fill_hole_area)


def _uploaded_study(header: pb.StudyHeader, shape: tuple[int, ...], is_video: bool) -> StudyInfo:
    spacing = header_spacing(header)
    return StudyInfo(
        spacing,
        header.label,
        is_video,
        modality=header.modality.strip().upper(),
        geometry=geometry_from_pb(header, spacing),
        external_id=header.external_id,
        **identity_from_pb(header, shape[0]),
    )


def _fetch(
    server: StudySources, header: pb.StudyHeader, is_video: bool, context: object | None
) -> tuple[np.ndarray, StudyInfo]:
    reference = header.pacs
    if server.pacs is None:
        raise PreconditionFailed(
            "no PACS endpoint is configured on this server: upload the voxels instead "
            "(or set MEDSAM2_PACS_<NAME>_URL or MEDSAM2_PACS_CONFIG)",
            reason="PACS_NOT_CONFIGURED",
        )
    if not reference.endpoint or not reference.study_uid:
        raise InvalidInput("header.pacs needs an endpoint and a study_uid")
    with server.pacs_fetches.fetch(context) as cancel:
        volume = server.pacs.open(
            reference.endpoint,
            reference.study_uid,
            reference.series_uid,
            server.uploads.check_study,
            cancel=cancel,
            limits=fetch_limits(server.registry.limits.max_study_voxels),
        )
    server.uploads.check_study(volume.voxels.shape)
    source = volume.dicom
    first = source.datasets[0] if source is not None else None
    study = StudyInfo(
        volume.spacing,
        header.label,
        is_video,
        modality=(header.modality or volume.modality or "").strip().upper(),
        geometry=volume.geometry,
        external_id=header.external_id,
        dicom=source,
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")) if first is not None else "",
        study_uid=source.study_uid if source is not None else reference.study_uid,
        series_uid=source.series_uid if source is not None else reference.series_uid,
        sop_instance_uids=tuple(source.slice_uids) if source is not None else (),
        pacs_endpoint=reference.endpoint,
    )
    # A colour cine loop (US/ES, SamplesPerPixel 3) reaches the model as RGB, as an RGB upload does.
    return (volume.rgb if volume.rgb is not None else volume.voxels), study
