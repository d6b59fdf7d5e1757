"""``medsam2 client``: the ``segment`` workflow through a running service, from a file or from PACS.

    medsam2 client --server HOST:PORT (INPUT | --pacs ENDPOINT --study UID [--series UID])
                   (--box X0,Y0,X1,Y1 --slice K | --actions FILE) [--range FIRST,LAST] --out PATH [--store ENDPOINT]

Every flag is checked, and the server asked whether it can do what the output
needs (PACS endpoints, DICOM results), before the model runs.  Each call
carries one routing key per run (``x-medsam2-session``, see docs/deploy.md) so a
consistent-hash router keeps the study on one replica.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from medsam2.errors import (
    BackendUnavailable,
    CapacityExceeded,
    InvalidInput,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    Unauthenticated,
)
from medsam2.io.atomic import write_bytes_atomic
from medsam2.settings import Settings

SR_SUFFIX = ".sr.dcm"


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``client`` command."""
    client = sub.add_parser("client", help="segment one study through a running service (mirrors 'segment')")
    client.add_argument(
        "input",
        type=Path,
        nargs="?",
        help="volume: DICOM folder or file, .nii, .nii.gz or MedSAM-style .npz; or a video (.mp4/.avi) or frame "
        "folder (or use --pacs)",
    )
    client.add_argument(
        "--server",
        required=True,
        help="HOST:PORT of the service, or a gRPC target naming several replicas (ipv4:10.0.0.1:50051,10.0.0.2:50051)",
    )
    client.add_argument(
        "--retries",
        type=int,
        default=5,
        help="calls at most per request when the server is unavailable or shutting down (1: no retry) [5]",
    )
    client.add_argument("--pacs", metavar="ENDPOINT", help="open the study from this PACS endpoint of the server")
    client.add_argument("--study", metavar="UID", help="StudyInstanceUID on --pacs")
    client.add_argument(
        "--series",
        metavar="UID",
        help="SeriesInstanceUID (default: the study's only image series; for a DICOM folder, the series to read)",
    )
    client.add_argument("--box", help="X0,Y0,X1,Y1 in pixels of the key slice (x = column, y = row)")
    client.add_argument("--slice", type=int, help="key slice K (with --box)")
    client.add_argument("--label", help="the object's name in the SEG and SR (with --box; default 'object 1')")
    client.add_argument("--colour", metavar="R,G,B", help="the object's display colour, sRGB 0..255 (with --box)")
    client.add_argument(
        "--type",
        dest="property_type",
        metavar="VALUE,SCHEME,MEANING",
        help="the object's coded type, e.g. 4147007,SCT,Mass (with --box; default SCT Tissue)",
    )
    client.add_argument(
        "--actions",
        type=Path,
        metavar="FILE",
        help="JSON list of steps (box, click, mask, propagate) instead of --box/--slice",
    )
    client.add_argument(
        "--mask-dir",
        type=Path,
        metavar="DIR",
        help="a video's first-frame PNG masks as MedSAM2's video script reads them (DAVIS PNG or NNN/ folders), "
        "instead of --box/--slice or --actions",
    )
    client.add_argument(
        "--range",
        dest="slice_range",
        help="FIRST,LAST slices to propagate through (with --actions: for propagate steps without one)",
    )
    client.add_argument("--preset", default="auto", help="intensity preset [auto: by modality]")
    client.add_argument("--window", help="custom CT window WIDTH,LEVEL in HU (overrides --preset)")
    client.add_argument("--modality", help="DICOM Modality for inputs that do not say (CT, MR, PT, US, ...)")
    client.add_argument(
        "--out",
        type=Path,
        help=f"result: .dcm is a DICOM SEG with its SR beside it (NAME{SR_SUFFIX}); .nii.gz, .npz (needed unless "
        "--out-masks is given)",
    )
    client.add_argument(
        "--out-masks",
        type=Path,
        metavar="DIR",
        help="also write per-frame PNG masks into DIR (new or empty) in the layout of --mask-dir, else DAVIS",
    )
    client.add_argument("--store", metavar="ENDPOINT", help="store the SEG and SR on this PACS endpoint of the server")
    client.add_argument("--token", default="", help="bearer token, if the server wants one")
    client.add_argument("--json", action="store_true", help="print the summary as JSON")
    client.add_argument("--no-progress", action="store_true", help="no progress bar")
    client.add_argument(
        "--save-annotation",
        type=Path,
        metavar="DIR",
        help="also save the image and final masks as a MedSAM2 training case in DIR (for finetune)",
    )
    client.add_argument(
        "--store-annotation",
        action="store_true",
        help="also save the image and final masks as a training case in the server's annotation store",
    )
    from medsam2.cli.postprocessing_args import add_postprocessing_arguments

    add_postprocessing_arguments(client)
    client.set_defaults(run=run_client)


def sr_path(out: Path) -> Path:
    """Where the SR goes beside a SEG: ``x.dcm`` -> ``x.sr.dcm``."""
    return out.with_name(out.name[: -len(".dcm")] + SR_SUFFIX)


def _check_args(args: argparse.Namespace) -> None:
    if (args.input is None) == (args.pacs is None):
        raise InvalidInput("give either an INPUT file or folder, or --pacs ENDPOINT --study UID")
    if args.pacs is not None and not args.study:
        raise InvalidInput("--pacs needs --study UID")
    if args.pacs is None and args.study:
        raise InvalidInput("--study goes with --pacs ENDPOINT")
    if args.mask_dir is not None:
        if args.actions is not None or args.box is not None or args.slice is not None:
            raise InvalidInput("--mask-dir prompts the first frame: it replaces --box/--slice and --actions")
        if args.input is None:
            raise InvalidInput("--mask-dir needs a local INPUT video or frame folder (its frames name the masks)")
        return
    if args.actions is None and (args.box is None or args.slice is None):
        raise InvalidInput("give --box X0,Y0,X1,Y1 with --slice K, --actions FILE, or --mask-dir DIR")
    if args.actions is not None and (args.box is not None or args.slice is not None):
        raise InvalidInput("--actions replaces --box and --slice: give one or the other")
    if args.actions is not None and (args.label or args.colour or args.property_type):
        raise InvalidInput(
            '--label, --colour and --type go with --box; in an actions file use "label", "colour", "type"'
        )


def _steps(args: argparse.Namespace) -> tuple[list, dict[int, np.ndarray]]:
    """The steps to run (the actions file's, or box + propagate) and the mask images they name, by step index."""
    from medsam2.cli.segment_cmd import _slice_range, parse_box
    from medsam2.engine.actions import shorthand_steps
    from medsam2.io.actions_file import read_actions

    if args.actions is None:
        box, describes = parse_box(args.box), _describes(args)
        steps = shorthand_steps(1, args.slice, box=box, slice_range=_slice_range(args.slice_range), describes=describes)
        return steps, {}
    actions = read_actions(args.actions)
    return actions.steps, actions.masks


def _describes(args: argparse.Namespace):  # noqa: ANN202 - engine.actions.ObjectDescription, imported lazily
    """--label, --colour and --type as the box step's object description (None when none is given)."""
    from medsam2.engine.actions import ObjectDescription, parse_colour, parse_concept, parse_label

    if not (args.label or args.colour or args.property_type):
        return None
    colour = None
    if args.colour:
        try:
            parts = [int(c) for c in args.colour.split(",")]
        except ValueError:
            raise InvalidInput(f"--colour must be R,G,B (whole numbers 0..255), got {args.colour!r}") from None
        colour = parse_colour(parts, "--colour")
    concept = None
    if args.property_type:
        parts = args.property_type.split(",", 2)
        if len(parts) != 3:
            raise InvalidInput(f"--type must be VALUE,SCHEME,MEANING, got {args.property_type!r}")
        concept = parse_concept(dict(zip(("value", "scheme", "meaning"), parts, strict=True)), "--type")
    label = parse_label(args.label, "--label") if args.label else None
    return ObjectDescription(label, colour, None, concept)


def object_info_pb(describes):  # noqa: ANN001, ANN201 - engine.actions.ObjectDescription -> pb.ObjectInfo | None
    """A step's object description as AddPrompt's object_info (None when the step describes nothing)."""
    from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb

    if describes is None:
        return None
    info = pb.ObjectInfo(label=describes.label or "", colour_rgb=list(describes.colour or ()))
    for name, concept in (("category", describes.category), ("type", describes.property_type)):
        if concept is not None:
            getattr(info, name).CopyFrom(
                pb.CodedConcept(value=concept.value, scheme=concept.scheme, meaning=concept.meaning)
            )
    return info


def run_client(args: argparse.Namespace, settings: Settings) -> int:
    """Open the study, run the steps, save the result (and store it), always closing the session."""

    from medsam2.api.client import Client, RetryPolicy
    from medsam2.cli.segment_cmd import check_outputs, mask_dir_steps, parse_pair, script_layout

    _check_args(args)
    check_outputs(args)
    if args.save_annotation is not None:
        from medsam2.datasets.annotations import check_annotation_folder

        if args.input is None:
            raise InvalidInput(
                "--save-annotation needs a local INPUT: the client does not download PACS images "
                "(--store-annotation saves the case on the server instead)"
            )
        check_annotation_folder(args.save_annotation)
    steps, mask_images = _steps(args) if args.mask_dir is None else ([], {})
    window = parse_pair(args.window, "--window", "WIDTH,LEVEL") if args.window else None
    volume = None
    if args.input is not None:
        from medsam2.io.volumes import read_volume

        volume = read_volume(args.input, args.series)
        check_outputs(args, volume)
        if args.store is not None and (volume.dicom is None or volume.dicom.multiframe):
            raise InvalidInput(
                f"--store: the server stores a SEG and SR over the DICOM series it came from, but "
                f"{args.input.name} is {volume.source_format} without per-slice DICOM instances; "
                "use --pacs ENDPOINT --study UID, or a DICOM series folder"
            )
    first = None
    if args.mask_dir is not None:
        from medsam2.cli.segment_cmd import _slice_range

        assert volume is not None  # _check_args
        steps, mask_images, first = mask_dir_steps(args.mask_dir, volume, _slice_range(args.slice_range))
        script_layout(args, first)
    if args.retries < 1:
        raise InvalidInput(f"--retries must be at least 1, got {args.retries}")
    client = Client(
        args.server,
        token=args.token,
        routing_key=uuid.uuid4().hex,
        retry=RetryPolicy(attempts=args.retries),
        on_retry=_say_retry,
    )
    started = time.perf_counter()
    with server_calls(client):
        info = client.server_info()
        for endpoint in {e for e in (args.pacs, args.store) if e}:
            if endpoint not in info.pacs_endpoints:
                known = ", ".join(info.pacs_endpoints) or "none"
                raise NotFound(f"the server has no PACS endpoint {endpoint!r}; it has: {known}")
        if args.store_annotation and "save-annotation" not in info.capabilities:
            raise PreconditionFailed(
                f"--store-annotation: the server at {args.server} keeps no annotations (it needs --annotations-dir)"
            )
        if volume is not None:
            session = _upload(client, volume, args, window)
        else:
            session = client.open_pacs(
                args.pacs,
                args.study,
                args.series or "",
                preset=args.preset,
                window=window,
                modality=(args.modality or "").upper(),
                label="medsam2 client",
            )
        if (
            args.out is not None
            and args.out.name.lower().endswith(".dcm")
            and not session.dicom_results
            and volume is None
        ):
            raise InvalidInput(f"--out {args.out.name}: the server cannot make a DICOM SEG of this study")
        try:
            slices = _run_steps(client, session, steps, mask_images, args)
            written = _save(client, session, args, volume, steps) if args.out is not None else []
            if args.out_masks is not None:
                written += _save_frame_masks(client, session, args, volume, first)
            if args.save_annotation is not None:
                written.append(_save_annotation(client, session, args, volume, window))
            stored = client.store_result(session.session_id, args.store) if args.store else None
            annotation = client.save_annotation(session.session_id) if args.store_annotation else None
        finally:
            client.close_session(session.session_id)
    summary = {
        "server": args.server,
        "session_slices": list(session.shape),
        "slices_streamed": slices,
        "seconds": round(time.perf_counter() - started, 3),
        "bytes_sent": client.bytes_sent,
        "bytes_received": client.bytes_received,
        "written": [str(p) for p in written],
        "model_version": session.model_version,
        "preset": session.preset,
        "postprocessing": {
            "largest_component": session.postprocessing.largest_component,
            "fill_hole_area": session.postprocessing.fill_hole_area,
            "non_overlapping_objects": session.postprocessing.non_overlapping_objects,
            "binarize_memory": session.postprocessing.binarize_memory,
        },
    }
    if stored is not None:
        summary["stored"] = {
            "study_uid": stored.study_uid,
            "seg": stored.seg_sop_instance_uid,
            "seg_series": stored.seg_series_uid,
            "sr": stored.sr_sop_instance_uid,
            "sr_series": stored.sr_series_uid,
        }
    if annotation is not None:
        summary["annotation"] = {
            "folder": annotation.folder,
            "case_file": annotation.case_file,
            "sha256": annotation.sha256,
            "object_ids": list(annotation.object_ids),
        }
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"segmented {session.shape[0]} slices in {summary['seconds']:.1f} s via {args.server} "
            f"(preset {session.preset}, model {session.model_version}) -> {', '.join(summary['written'])}"
            + (
                f"; stored SEG {stored.seg_sop_instance_uid} and SR {stored.sr_sop_instance_uid} on {args.store}"
                if stored is not None
                else ""
            )
            + (
                f"; saved training case {annotation.folder}/{annotation.case_file} on the server"
                if annotation is not None
                else ""
            )
        )
    return 0


def _save_frame_masks(client, session, args: argparse.Namespace, volume, first) -> list[Path]:  # noqa: ANN001
    """Per-frame PNG masks of the session, in --mask-dir's layout (else DAVIS), named after the input's frames."""
    from medsam2.io.video_masks import frame_names, write_frame_masks

    masks = client.object_masks(session.session_id)
    count = int(session.shape[0])
    names = frame_names(volume.frame_names if volume is not None else (), count)
    per_object, palette = (first.per_object, first.palette) if first is not None else (False, None)
    return write_frame_masks(args.out_masks, masks, names, per_object=per_object, palette=palette)


def _upload(client, volume, args: argparse.Namespace, window):  # noqa: ANN001, ANN202
    from medsam2.api.convert import geometry_to_pb
    from medsam2.cli.postprocessing_args import requested_fields
    from medsam2.io.video import is_video

    identity: dict[str, object] = {}
    if volume.dicom is not None:
        first = volume.dicom.datasets[0]
        identity = {
            "study_uid": volume.dicom.study_uid,
            "series_uid": volume.dicom.series_uid,
            "frame_of_reference_uid": str(first.get("FrameOfReferenceUID", "")),
            "sop_instance_uids": [] if volume.dicom.multiframe else list(volume.dicom.slice_uids),
        }
    modality = (args.modality or volume.modality or "").upper()
    video = is_video(volume)
    return client.create_session(
        volume.rgb if video and volume.rgb is not None else volume.voxels,
        volume.spacing,
        video=video,
        postprocessing=requested_fields(args),
        preset=args.preset,
        window=window,
        label=args.input.name,
        modality=modality,
        geometry=geometry_to_pb(volume.geometry),
        identity=identity,
    )


def _run_steps(
    client,  # noqa: ANN001
    session,  # noqa: ANN001
    steps: list,
    mask_images: dict[int, np.ndarray],
    args: argparse.Namespace,
) -> int:
    """Check every step against the study, then send them in order; returns the slice results streamed."""
    from medsam2.cli.segment_cmd import _slice_range
    from medsam2.engine.actions import BoxStep, ClickStep, MaskStep, PropagateStep, check_actions

    default_range = _slice_range(args.slice_range)  # for propagate steps that name no range, as in segment
    steps = [
        PropagateStep(s.index, default_range)
        if isinstance(s, PropagateStep) and s.slice_range is None and default_range is not None
        else s
        for s in steps
    ]
    check_actions(steps, tuple(session.shape), mask_images)  # before the model runs
    sid = session.session_id
    streamed = 0
    for step in steps:
        if isinstance(step, BoxStep):
            b = step.box
            info = object_info_pb(step.describes)
            client.add_prompt(sid, step.obj_id, step.slice, box=(b.x0, b.y0, b.x1, b.y1), object_info=info)
        elif isinstance(step, ClickStep):
            # Clicks on one slice accumulate, as in ``segment`` (engine.actions.to_prompt).
            client.add_prompt(
                sid,
                step.obj_id,
                step.slice,
                points=[(*step.point, step.positive)],
                keep_previous_points=True,
                object_info=object_info_pb(step.describes),
            )
        elif isinstance(step, MaskStep):
            info = object_info_pb(step.describes)
            client.add_prompt(sid, step.obj_id, step.slice, mask=mask_images[step.index], object_info=info)
        else:
            fields = (
                {}
                if step.slice_range is None
                else {"first_slice": step.slice_range[0], "last_slice": step.slice_range[1]}
            )
            streamed += _propagate(client, sid, fields, args.no_progress)
    return streamed


def _propagate(client, session_id: str, fields: dict, quiet: bool) -> int:  # noqa: ANN001
    from tqdm import tqdm

    progress = None
    count = 0
    for result in client.propagate(session_id, **fields):
        if result.done <= count and progress is not None:
            progress.reset(total=result.total)  # a retried stream starts over (on another replica, maybe)
        count = result.done
        if progress is None and not quiet:
            progress = tqdm(total=result.total, unit="slice", desc="propagating")
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()
    return count


def _save_annotation(client, session, args: argparse.Namespace, volume, window) -> Path:  # noqa: ANN001
    """The image as the service prepared it and the final label map, as a MedSAM2 npz training case."""
    from medsam2.datasets.annotations import label_map, save_annotation
    from medsam2.imaging.windowing import to_uint8

    labels = label_map(client.object_masks(session.session_id), volume.voxels.shape)
    modality = (args.modality or volume.modality or "").upper() or None
    image = to_uint8(volume.voxels, args.preset, window, modality=modality)
    return save_annotation(
        args.save_annotation,
        args.input.name.split(".")[0],
        image,
        labels,
        volume.spacing,
        modality=modality or "CT",
        provenance={
            "source": "medsam2 client",
            "server": args.server,
            "model_version": session.model_version,
            "input": args.input.name,
        },
    )


def _save(client, session, args: argparse.Namespace, volume, steps: list) -> list[Path]:  # noqa: ANN001
    """Write the result: from the local source when there is one, else the server's files."""
    from medsam2.api.pb.medsam2.v1 import segmentation_pb2 as pb
    from medsam2.engine.actions import object_descriptions
    from medsam2.io.dicom_seg import segment_specs
    from medsam2.io.outputs import write_result

    out: Path = args.out
    name = out.name.lower()
    if volume is not None:
        masks = client.object_masks(session.session_id)
        specs = segment_specs(object_descriptions(steps), sorted(masks))
        written = write_result(out, masks, volume, model_version=session.model_version, segments=specs)
        if name.endswith(".dcm"):
            written.append(_write_local_sr(out, masks, volume, session.model_version))
        return written
    if name.endswith(".dcm"):
        seg, _ = client.result(session.session_id, pb.RESULT_FORMAT_DICOM_SEG)
        sr, _ = client.result(session.session_id, pb.RESULT_FORMAT_DICOM_SR)
        return [write_bytes_atomic(out, seg), write_bytes_atomic(sr_path(out), sr)]
    fmt = pb.RESULT_FORMAT_NPZ if name.endswith(".npz") else pb.RESULT_FORMAT_NIFTI_GZ
    if name.endswith(".nii"):
        raise InvalidInput("--out from PACS: write .nii.gz, .npz or .dcm")
    from medsam2.io.labels import LabelEntry, write_labels_json

    # Object-id values, as the local writer's files; the label map goes beside the file as <name>.labels.json.
    data, first = client.result(session.session_id, fmt, label_values=pb.LABEL_VALUES_OBJECT_IDS)
    entries = [LabelEntry(e.value, e.object_id, e.name, tuple(e.colour_rgb)) for e in first.labels]  # type: ignore[arg-type]
    return [write_bytes_atomic(out, data), write_labels_json(out, entries)]


def _write_local_sr(out: Path, masks: dict[int, np.ndarray], volume, model_version: str) -> Path:  # noqa: ANN001
    import pydicom

    from medsam2.io.dicom_sr import build_measurement_report, encode_report
    from medsam2.io.measurements import measure_all

    seg = pydicom.dcmread(out)
    labels = {int(s.TrackingID.split()[-1]): str(s.SegmentLabel) for s in seg.SegmentSequence}
    report = build_measurement_report(
        seg, measure_all(masks, volume.spacing, labels), model_version=model_version, source=volume.dicom
    )
    return write_bytes_atomic(sr_path(out), encode_report(report))


@contextmanager
def server_calls(client) -> Iterator[None]:  # noqa: ANN001 - api.client.Client, imported lazily
    """Turn the server's refusals into the CLI's errors (so its exit codes), and close the channel at the end."""
    import grpc

    try:
        yield
    except grpc.RpcError as exc:
        raise _client_error(exc) from None
    finally:
        client.close()


def _say_retry(error, attempt: int, delay_s: float) -> None:  # noqa: ANN001 - grpc.RpcError
    """Tell the user why the client waits (the server's reason, e.g. SERVER_SHUTTING_DOWN), on stderr."""
    import sys

    details = (error.details() or "").splitlines()[0][:200] if hasattr(error, "details") else ""
    print(
        f"medsam2 client: {error.code().name} ({details}); retrying in {delay_s:.1f} s (attempt {attempt + 2})",
        file=sys.stderr,
        flush=True,
    )


def _client_error(exc) -> Exception:  # noqa: ANN001 - grpc.RpcError
    import grpc

    from medsam2.api.client import ServiceError
    from medsam2.errors import REASON_BY_NAME

    error = ServiceError.from_rpc_error(exc)
    code, details = error.code(), error.details()
    catalogued = REASON_BY_NAME.get(error.reason)
    if catalogued is not None:
        # The reason decides (docs/errors.md): its error type gives the exit code, and the message says what to do.
        where = f" (field {error.field})" if error.field else ""
        retry = f"; retry in {error.retry_after_s:g} s" if error.retry_after_s else ""
        return catalogued.error(
            f"server refused the request: {error.reason}{where}: {details}{retry}",
            reason=error.reason,
            field=error.field,
            retry_after_s=error.retry_after_s,
        )
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return InvalidInput(f"server refused the request ({code.name}): {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"server: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return CapacityExceeded(f"server: {details}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(f"server: {details}")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied(f"server: {details}")
    return BackendUnavailable(f"server error ({code.name}): {details}")
