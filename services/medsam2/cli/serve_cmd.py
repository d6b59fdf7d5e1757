"""``medsam2 serve`` and ``medsam2 client``."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path


from medsam2.errors import BackendUnavailable, InvalidInput, NotFound
from medsam2.server.config import ServerSettings
from medsam2.settings import Settings, add_arguments, resolve

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``serve`` and ``client`` commands."""
    serve = sub.add_parser("serve", help="run the gRPC session service (embedded ONNX Runtime, or Triton)")
    add_arguments(serve, ServerSettings, "server settings")
    serve.set_defaults(run=run_serve)

    client = sub.add_parser("client", help="segment one volume through a running service (mirrors 'segment')")
    client.add_argument("input", type=Path, help="volume: DICOM folder, .nii, .nii.gz or MedSAM-style .npz")
    client.add_argument("--server", required=True, help="HOST:PORT of the service")
    client.add_argument("--box", required=True, help="X0,Y0,X1,Y1 in pixels of the key slice")
    client.add_argument("--slice", type=int, required=True, help="key slice K")
    client.add_argument("--range", dest="slice_range", help="FIRST,LAST slices to propagate through")
    client.add_argument("--preset", default="auto", help="intensity preset [auto]")
    client.add_argument("--out", type=Path, required=True, help="result to write (.dcm SEG for DICOM input, .nii.gz, .npz)")
    client.add_argument("--token", default="", help="bearer token, if the server wants one")
    client.add_argument("--no-progress", action="store_true", help="no progress bar")
    client.add_argument("--save-annotation", type=Path, metavar="DIR",
                        help="also save the image and final masks as a MedSAM2 training case in DIR (for finetune)")
    client.set_defaults(run=run_client)


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until a signal, then drain."""
    from medsam2.server.app import make_backend, serve_forever

    server_settings = resolve(ServerSettings, args)
    return serve_forever(server_settings, make_backend(server_settings, settings.threads))


def run_client(args: argparse.Namespace, settings: Settings) -> int:
    """Upload, prompt, propagate with a progress bar, and save the result."""
    import grpc
    from tqdm import tqdm

    from medsam2.api.client import Client
    from medsam2.cli.segment_cmd import _slice_range, parse_box
    from medsam2.io.outputs import check_output, write_result
    from medsam2.io.volumes import read_volume

    check_output(args.out)
    if args.save_annotation is not None:
        from medsam2.datasets.annotations import check_annotation_folder

        check_annotation_folder(args.save_annotation)
    volume = read_volume(args.input)
    check_output(args.out, volume)
    box = parse_box(args.box)
    slice_range = _slice_range(args.slice_range)
    client = Client(args.server, token=args.token)
    started = time.perf_counter()
    try:
        session = client.create_session(volume.voxels, volume.spacing, preset=args.preset, label=args.input.name)
        try:
            client.add_box(session.session_id, 1, args.slice, (box.x0, box.y0, box.x1, box.y1))
            fields = {} if slice_range is None else {"first_slice": slice_range[0], "last_slice": slice_range[1]}
            progress = None
            for result in client.propagate(session.session_id, **fields):
                if progress is None and not args.no_progress:
                    progress = tqdm(total=result.total, unit="slice", desc="propagating")
                if progress is not None:
                    progress.update(1)
            if progress is not None:
                progress.close()
            labels, object_ids = client.result_labels(session.session_id)
        finally:
            client.close_session(session.session_id)
    except grpc.RpcError as exc:
        raise _client_error(exc) from None
    finally:
        client.close()
    mask = labels > 0
    write_result(args.out, {1: mask}, volume, model_version=f"MedSAM2 via {args.server}")
    if args.save_annotation is not None:
        from medsam2.datasets.annotations import save_annotation
        from medsam2.imaging.windowing import to_uint8

        saved = save_annotation(args.save_annotation, args.input.name.split(".")[0],
                                to_uint8(volume.voxels, args.preset), mask.astype("uint8"),
                                volume.spacing, modality=volume.modality or "CT",
                                provenance={"source": "medsam2 client", "server": args.server,
                                            "prompt": {"slice": args.slice, "box": args.box},
                                            "input": args.input.name})
        print(f"saved the annotation as training data: {saved}")
    voxels = int(mask.sum())
    print(f"segmented {mask.shape[0]} slices in {time.perf_counter() - started:.1f} s via {args.server}: "
          f"{voxels} voxels, {voxels * volume.voxel_ml:.2f} mL -> {args.out}")
    return 0


def _client_error(exc) -> Exception:  # noqa: ANN001 - grpc.RpcError
    import grpc

    code, details = exc.code(), exc.details()
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return InvalidInput(f"server refused the request ({code.name}): {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"server: {details}")
    return BackendUnavailable(f"server error ({code.name}): {details}")
