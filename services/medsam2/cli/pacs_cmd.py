"""``medsam2 pacs``: list, fetch and store over DICOMweb, by named endpoint.

Endpoints come from ``--pacs-config FILE`` (JSON or TOML), ``$MEDSAM2_PACS_CONFIG`` and
``MEDSAM2_PACS_<NAME>_URL``/``_TOKEN``/``_USERNAME``/``_PASSWORD`` (see ``medsam2.pacs.config``).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from medsam2.errors import InvalidInput, NotFound, OutputNotWritable
from medsam2.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``pacs`` command group."""
    pacs = sub.add_parser("pacs", help="list, fetch and store DICOM over DICOMweb, by named endpoint")
    pacs.add_argument(
        "--pacs-config", type=Path, metavar="FILE", help="endpoints file, JSON or TOML [env MEDSAM2_PACS_CONFIG]"
    )
    actions = pacs.add_subparsers(dest="pacs_action", required=True, metavar="ACTION")

    endpoints = actions.add_parser("endpoints", help="list the configured endpoints (names and URLs)")
    endpoints.set_defaults(run=run_endpoints)

    listing = actions.add_parser("list", help="list series on an endpoint (QIDO-RS)")
    listing.add_argument("endpoint", help="endpoint name")
    listing.add_argument("--study", metavar="UID", help="only this StudyInstanceUID")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=run_list)

    fetch = actions.add_parser("fetch", help="download one series (WADO-RS) into a folder of .dcm files")
    fetch.add_argument("endpoint", help="endpoint name")
    fetch.add_argument("study", help="StudyInstanceUID")
    fetch.add_argument("series", help="SeriesInstanceUID")
    fetch.add_argument("--out", type=Path, required=True, help="folder to write (created; must be empty)")
    fetch.set_defaults(run=run_fetch)

    store = actions.add_parser("store", help="upload DICOM files (STOW-RS); SEGs are validated first")
    store.add_argument("endpoint", help="endpoint name")
    store.add_argument("paths", type=Path, nargs="+", help="DICOM files or folders")
    store.set_defaults(run=run_store)


def _endpoint(args: argparse.Namespace):  # noqa: ANN202 (PacsEndpoint, imported lazily)
    from medsam2.pacs.config import load_config

    return load_config(args.pacs_config, os.environ).get(args.endpoint)


def run_endpoints(args: argparse.Namespace, settings: Settings) -> int:
    """Print the configured endpoints (never their secrets)."""
    from medsam2.pacs.config import load_config

    config = load_config(args.pacs_config, os.environ)
    for name, endpoint in sorted(config.endpoints.items()):
        auth = "token" if endpoint.token else "basic" if endpoint.username else "none"
        print(f"{name}\t{endpoint.url}\tauth={auth}")
    return 0


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print the series on an endpoint."""
    from medsam2.pacs.transfer import list_series

    found = list_series(_endpoint(args), args.study)
    if args.json:
        print(json.dumps([asdict(info) for info in found]))
    else:
        for info in found:
            print(f"{info.study_uid}\t{info.series_uid}\t{info.modality}\t{info.instances}\t{info.description}")
    return 0


def run_fetch(args: argparse.Namespace, settings: Settings) -> int:
    """Download a series' instances as files named by SOPInstanceUID."""
    from medsam2.pacs.transfer import fetch_instances

    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"--out {out} is not empty; fetch into a new or empty folder")
    datasets = fetch_instances(_endpoint(args), args.study, args.series)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for ds in datasets:
            ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    except OSError as exc:
        raise OutputNotWritable(f"cannot write into {out}: {exc.strerror or exc}") from exc
    print(f"fetched {len(datasets)} instance(s) of series {args.series} into {out}")
    return 0


def run_store(args: argparse.Namespace, settings: Settings) -> int:
    """Read and check every file first, then STOW-RS them: SEGs one by one after validation, images together."""
    from medsam2.io.dicom_files import SEGMENTATION_STORAGE, read_file
    from medsam2.io.dicom_seg import validate_seg
    from medsam2.pacs.transfer import store_instances, store_seg

    files: list[Path] = []
    for path in args.paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            raise NotFound(f"not found: {path}")
    datasets = [read_file(path) for path in files]
    for ds in datasets:
        if "PixelData" in ds:
            _ = ds.PixelData  # load deferred pixel data now, while the file is known to be whole
    endpoint = _endpoint(args)
    segs = [ds for ds in datasets if str(ds.SOPClassUID) == SEGMENTATION_STORAGE]
    others = [ds for ds in datasets if str(ds.SOPClassUID) != SEGMENTATION_STORAGE]
    for seg in segs:
        validate_seg(seg)  # every SEG is checked before anything at all is sent
    by_study: dict[str, list] = {}
    for ds in others:
        by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    stored = [uid for group in by_study.values() for uid in store_instances(endpoint, group)]
    stored += [store_seg(endpoint, seg) for seg in segs]
    print(f"stored {len(stored)} instance(s) on {endpoint.name}")
    return 0
