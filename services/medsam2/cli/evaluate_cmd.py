"""``medsam2 evaluate``: DSC and NSD of a model on labelled data with the paper's protocol."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medsam2.imaging.windowing import Preset
from medsam2.models.download import file_sha256
from medsam2.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command."""
    ev = sub.add_parser("evaluate", help="score a model (DSC, NSD) on labelled data with MedSAM2's protocol")
    ev.add_argument(
        "dataset",
        type=Path,
        help="a MedSAM2 .npz or a folder of them, a folder with imagesTr/labelsTr NIfTI pairs, "
        "or a folder of case folders each with a DICOM series and its SEG",
    )
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="MedSAM2 checkpoint; its graphs are exported once and cached")
    source.add_argument("--graphs", type=Path, help="folder of exported ONNX graphs or a versioned model repository")
    source.add_argument("--server", metavar="HOST:PORT", help="measure a deployed service through its gRPC API")
    ev.add_argument(
        "--model-version",
        type=int,
        default=None,
        help="with --graphs on a model repository: the version to measure [newest]",
    )
    ev.add_argument("--token", default="", help="bearer token for --server")
    ev.add_argument("--out", type=Path, required=True, help="folder for per_object.csv, summary.json, boxplots.png")
    ev.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        metavar="PX",
        help="move each side of the ground-truth box by up to PX pixels [0]",
    )
    ev.add_argument("--seed", type=int, default=0, help="seed of the box jitter [0]")
    ev.add_argument("--tolerance-mm", type=float, default=2.0, help="NSD tolerance in mm [2]")
    ev.add_argument(
        "--preset",
        choices=[p.value for p in Preset],
        default=Preset.AUTO.value,
        help="intensity preset for images that are not uint8 yet [auto]",
    )
    ev.add_argument(
        "--save-predictions",
        action="store_true",
        help="also write each case's predicted labels to OUT/predictions/<case>.npz",
    )
    ev.add_argument("--json", action="store_true", help='print {"cases": [...], "summary": {...}}')
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.set_defaults(run=run_evaluate)


def _predictor(args: argparse.Namespace, settings: Settings):  # noqa: ANN202 - a Predictor
    from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
    from medsam2.evaluation.predictors import EnginePredictor

    if args.server:
        from medsam2.cli.service_predictor import ServicePredictor

        return ServicePredictor(args.server, token=args.token), {"server": args.server}
    if args.checkpoint is not None:
        from medsam2.models.source import graphs_for_checkpoint

        return (
            EnginePredictor(
                OnnxRuntimeBackend(graphs_for_checkpoint(args.checkpoint, settings), threads=settings.threads)
            ),
            {"checkpoint": str(args.checkpoint), "checkpoint_sha256": file_sha256(args.checkpoint)},
        )
    from medsam2.models.versions import choose_version

    version, provenance = choose_version(args.graphs, args.model_version)
    model: dict = {"graphs": str(args.graphs)}
    if provenance is not None:
        model |= {"version": version, "provenance": provenance.to_json()}
    return EnginePredictor(OnnxRuntimeBackend(args.graphs, threads=settings.threads, version=version)), model


def run_evaluate(args: argparse.Namespace, settings: Settings) -> int:
    """Check the data and the output folder, then score every object and write the reports."""
    from medsam2.evaluation import report
    from medsam2.evaluation.cases import find_cases
    from medsam2.evaluation.runner import EvaluationOptions, check_cases, evaluate

    report.check_output_folder(args.out)
    sources = find_cases(args.dataset, preset=args.preset)
    check_cases(sources)
    predictor, model = _predictor(args, settings)
    options = EvaluationOptions(tolerance_mm=args.tolerance_mm, jitter_px=args.jitter, seed=args.seed)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = tqdm(total=len(sources), unit="case", desc="evaluating")
    started = time.perf_counter()
    try:
        rows = evaluate(
            sources,
            predictor,
            options,
            on_case=(lambda _: progress.update(1)) if progress else None,
            save_predictions=args.out / "predictions" if args.save_predictions else None,
            model_version=json.dumps(model, sort_keys=True),
        )
    finally:
        if progress is not None:
            progress.close()
        predictor.close()
    summary = report.summarise(rows) | {
        "model": model,
        "dataset": str(args.dataset),
        "tolerance_mm": args.tolerance_mm,
        "jitter_px": args.jitter,
        "seed": args.seed,
        "cases": len(sources),
        "objects": len(rows),
        "seconds": round(time.perf_counter() - started, 2),
    }
    report.write_csv(args.out / report.CSV_NAME, rows)
    report.write_summary(args.out / report.SUMMARY_NAME, summary)
    report.write_box_plots(args.out / report.PLOT_NAME, rows)
    if args.json:
        print(json.dumps({"cases": [r.to_json() for r in rows], "summary": summary}))
    else:
        overall = summary["overall"]
        print(
            f"{len(rows)} objects in {len(sources)} cases: DSC median {overall['dsc'].get('median', 0):.4f} "
            f"(IQR {overall['dsc'].get('iqr', 0):.4f}), NSD median {overall['nsd'].get('median', 0):.4f} "
            f"(IQR {overall['nsd'].get('iqr', 0):.4f}) -> {args.out}"
        )
    return 0
