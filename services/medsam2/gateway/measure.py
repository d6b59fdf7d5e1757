"""Volume and RECIST of each object in a session's result, for the viewer: two calls through the gateway's routes."""

from __future__ import annotations

import io

import numpy as np

from medsam2.gateway.context import HttpCallContext, catalogued, refusal
from medsam2.io.measurements import measure


def measurements(gateway, session_id: str, context: HttpCallContext) -> tuple[int, dict]:  # noqa: ANN001 - a Gateway
    """(HTTP status, JSON body): each object's voxels, volume in mL, slice span and RECIST axes."""
    get_session, get_result = gateway.routes.get("GetSession"), gateway.routes.get("GetResult")
    if get_session is None or get_result is None:
        return 404, refusal(404, catalogued("this server has no results", reason="NO_SUCH_METHOD"))[0]
    session = gateway.unary(get_session, get_session.request_class()(session_id=session_id), context)
    if session is None or context.failed():
        return context.error()
    # Each object is measured on its own mask (overlaps kept), never on a merged label volume, so an object's
    # volume does not shrink when another overlaps it.
    result_request = get_result.request_class()(session_id=session_id, format="RESULT_FORMAT_OBJECT_MASKS_NPZ")
    data, first = bytearray(), None
    for chunk in gateway.stream(get_result, result_request, context):
        first = first or chunk
        data += chunk.data
    if context.failed() or first is None:
        return context.error()
    spacing = tuple(session.spacing_mm) if len(session.spacing_mm) == 3 else (1.0, 1.0, 1.0)
    objects = []
    with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as npz:
        masks = {obj_id: npz[f"object_{obj_id}"] for obj_id in first.object_ids}
    for obj_id, mask in masks.items():
        m = measure(mask, spacing, obj_id=obj_id)
        recist = None
        if m.recist is not None:
            recist = {
                "slice": m.recist.slice,
                "longAxisMm": m.recist.long_axis_mm,
                "shortAxisMm": m.recist.short_axis_mm,
                "longAxisEndpoints": m.recist.long_axis_endpoints,
                "shortAxisEndpoints": m.recist.short_axis_endpoints,
            }
        objects.append(
            {
                "objectId": obj_id,
                "voxels": m.voxels,
                "volumeMl": m.volume_ml,
                "slices": list(m.slices) if m.slices else None,
                "recist": recist,
            }
        )
    return 200, {"spacingMm": list(spacing), "objects": objects}
