"""SaveAnnotation's case: a session's masks and slices written to the annotation store as a training case."""

from __future__ import annotations

from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
from medsam2.errors import InvalidInput, PreconditionFailed
from medsam2.io.labels import LabelValues, build_labels
from medsam2.models.provenance import ModelProvenance
from medsam2.server.annotation_store import AnnotationStore
from medsam2.server.sessions import SessionEntry

MAX_TRAINING_LABEL = 65535
"""The largest object id a training case can hold (its labels are 16-bit)."""


def save_training_case(
    annotations: AnnotationStore, entry: SessionEntry, case_name: str, model: ModelProvenance
) -> pb.SaveAnnotationResponse:
    """Save the session's non-empty masks as a training case (``case_name``: the file's name, else the study's)."""
    masks = {i: m for i, m in entry.results.masks().items() if m.any()}
    if not masks:
        raise PreconditionFailed(
            "the session has no masks to save yet: add a prompt (and propagate) first", reason="NO_MASKS"
        )
    too_large = [i for i in masks if i > MAX_TRAINING_LABEL]
    if too_large:
        raise InvalidInput(
            f"object id {too_large[0]} does not fit the training format's labels (1..{MAX_TRAINING_LABEL})"
        )
    # The same label volume as GetResult's with object-id values (one builder, one overlap rule).
    labels = build_labels(masks, entry.results.shape, LabelValues.OBJECT_IDS)
    study = entry.study
    saved = annotations.save(
        entry.owner,
        case_name or study.label or "study",
        entry.session.frames,
        labels,
        study.spacing,
        modality=study.modality or ("VIDEO" if study.is_video else "CT"),
        video=study.is_video,
        provenance={
            "source": "medsam2 serve SaveAnnotation",
            "saved_by": entry.owner,
            "session_id": entry.session_id,
            "preset": study.preset,
            "model_version": model.version,
            "model_checkpoint_sha256": model.checkpoint_sha256,
            "objects": {str(i): entry.objects[i].label if i in entry.objects else "" for i in masks},
        },
    )
    reply = pb.SaveAnnotationResponse(
        case_file=saved.case_file,
        folder=saved.folder,
        sha256=saved.sha256,
        size_bytes=saved.size_bytes,
        object_ids=sorted(masks),
        model_version=model.short_sha,
    )
    return reply
