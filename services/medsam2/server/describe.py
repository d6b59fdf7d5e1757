"""What GetSession, ListSessions and GetServerInfo say: a session's and the server's description as messages."""

from __future__ import annotations

from importlib import metadata
from typing import Protocol

from medsam2.api.convert import geometry_to_pb, postprocessing_to_pb
from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.engine.session import StageBackend
from medsam2.graphs import MAX_POINTS
from medsam2.imaging.windowing import Preset
from medsam2.models.provenance import ModelProvenance
from medsam2.pacs.service import PacsStudies
from medsam2.server.annotation_store import AnnotationStore
from medsam2.server.result_chunks import RESULT_FORMATS
from medsam2.server.sessions import SessionEntry, SessionRegistry, StudyInfo


class Described(Protocol):
    """What a description reads from the servicer."""

    registry: SessionRegistry
    backend: StageBackend
    model: ModelProvenance
    pacs: PacsStudies | None
    annotations: AnnotationStore
    max_message_bytes: int


def model_of(server: Described, entry: SessionEntry) -> ModelProvenance:
    """The model a session runs on: its pinned version's provenance when numbered versions are served."""
    versions = server.registry.versions
    if versions is None or entry.model_version is None:
        return server.model
    return versions.provenance(entry.model_version) or ModelProvenance(version=entry.model_version)


def describe_session(server: Described, entry: SessionEntry) -> pb.Session:
    """A session as GetSession, ListSessions and CreateSession describe it (GetSession adds its history)."""
    described = entry.session.describe()
    study = entry.study
    return pb.Session(
        session_id=entry.session_id,
        shape=list(described.shape),
        spacing_mm=list(study.spacing),
        object_ids=described.object_ids,
        state_bytes=entry.state_bytes,
        idle_seconds=entry.idle_seconds(),
        expires_in_seconds=server.registry.expires_in(entry),
        label=study.label,
        backend=server.backend.name,
        busy=entry.busy,
        modality=study.modality,
        geometry=geometry_to_pb(study.geometry),
        frame_of_reference_uid=study.frame_of_reference_uid,
        study_uid=study.study_uid,
        series_uid=study.series_uid,
        external_id=study.external_id,
        preset=study.preset,
        dicom_results=study.dicom is not None,
        model_version=model_of(server, entry).short_sha,
        durable=entry.durable,
        model=_model_info(model_of(server, entry)),
        image_kept=entry.image is not None,
        postprocessing=postprocessing_to_pb(study.postprocessing) if study.postprocessing is not None else None,
        sop_instance_uids=_slice_uids(study),
    )


def server_info(server: Described) -> pb.ServerInfo:
    limits = server.registry.limits
    versions = server.registry.versions
    model = (versions.provenance(versions.current_version) if versions is not None else None) or server.model
    capabilities = ["corrections", "request-ids", "object-masks", "dicom-seg", "dicom-sr", "image"]
    if server.pacs is not None:
        capabilities += ["pacs", "store-result"]
    if server.annotations.enabled:
        capabilities.append("save-annotation")
    if versions is not None:
        capabilities.append("model-versions")
    return pb.ServerInfo(
        server_version=_package_version(),
        api_version=pb.DESCRIPTOR.package,
        backend=server.backend.name,
        precision=server.backend.precision,
        model=_model_info(model),
        limits=pb.ServerLimits(
            max_sessions=limits.max_sessions,
            max_study_voxels=limits.max_study_voxels,
            max_state_bytes=limits.max_state_bytes,
            session_ttl_seconds=limits.idle_ttl_s,
            max_message_bytes=server.max_message_bytes,
            max_points=MAX_POINTS,
        ),
        presets=[p.value for p in Preset],
        pacs_endpoints=server.pacs.endpoint_names if server.pacs is not None else [],
        result_formats=list(RESULT_FORMATS),
        capabilities=capabilities,
        model_versions=versions.available() if versions is not None else [],
    )


def _model_info(model: ModelProvenance) -> pb.ModelInfo:
    return pb.ModelInfo(
        version=model.version,
        checkpoint_sha256=model.checkpoint_sha256 or "",
        short_sha=model.short_sha,
        untrained=bool(model.untrained),
    )


def _package_version() -> str:
    try:
        return metadata.version("medsam2-serving")
    except metadata.PackageNotFoundError:
        return "unknown"


def _slice_uids(study: StudyInfo) -> list[str]:
    """Each slice's SOPInstanceUID (a multi-frame source has one object, so none per slice)."""
    if study.dicom is not None:
        return [] if study.dicom.multiframe else list(study.dicom.slice_uids)
    return list(study.sop_instance_uids)
