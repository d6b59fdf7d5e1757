"""Fine-tune on the synthetic dataset on this CPU and measure held-out DSC/NSD before and after.

    PYTHONPATH=services:export python benchmarks/finetune_bench.py --work /tmp/ft --steps 300

(``scripts/finetune_round.sh`` runs the same round through the public CLI and exports versions 1 and 2.)

Writes a training set and a held-out set (other seeds), scores the base checkpoint with the paper's protocol
(GT box on the middle slice), runs ``finetune --freeze-encoder``, exports the result's graphs and scores
them again. Prints one JSON line: losses (first and last five steps), DSC/NSD medians, seconds per phase.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _score(graphs: Path, held_out: Path) -> dict:
    from medsam2.backends.onnxruntime_backend import OnnxRuntimeBackend
    from medsam2.evaluation.cases import find_cases
    from medsam2.evaluation.predictors import EnginePredictor
    from medsam2.evaluation.report import summarise
    from medsam2.evaluation.runner import evaluate

    rows = evaluate(find_cases(held_out), EnginePredictor(OnnxRuntimeBackend(graphs, threads=2)))
    overall = summarise(rows)["overall"]
    return {
        "dsc_median": overall["dsc"]["median"],
        "dsc_mean": overall["dsc"]["mean"],
        "nsd_median": overall["nsd"]["median"],
        "objects": len(rows),
    }


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, help="base checkpoint [a seeded random one]")
    parser.add_argument("--base-graphs", type=Path, help="exported graphs of the base checkpoint [export them]")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--clip-length", type=int, default=2)
    parser.add_argument("--lr-scale", type=float, default=10.0, help="for an untrained base (see finetune --lr-scale)")
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--slices", type=int, default=12)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    from medsam2.datasets.synthetic import SyntheticOptions, write_synthetic_dataset
    from medsam2_export.finetune.trainer import FinetuneOptions, finetune
    from medsam2_export.model import load_model, write_random_checkpoint
    from medsam2_export.onnx_export import export_all

    work = args.work
    train, held_out = work / "train", work / "held_out"
    write_synthetic_dataset(train, SyntheticOptions(volumes=4, videos=0, slices=args.slices, size=args.size, seed=1))
    write_synthetic_dataset(held_out, SyntheticOptions(volumes=2, videos=0, slices=args.slices, size=args.size, seed=2))
    base = args.checkpoint or write_random_checkpoint(11, work / "base.pt").path
    timings = {}
    t = time.perf_counter()
    base_graphs = args.base_graphs
    if base_graphs is None:
        base_graphs = work / "graphs-base"
        export_all(load_model(base), base_graphs)
    before = _score(base_graphs, held_out)
    timings["score_base_s"] = round(time.perf_counter() - t, 1)
    print(json.dumps({"before": before, **timings}), flush=True)
    t = time.perf_counter()
    result = finetune(
        base,
        train,
        work / "new.pt",
        FinetuneOptions(
            steps=args.steps,
            clip_length=args.clip_length,
            freeze_encoder=True,
            lr_scale=args.lr_scale,
            jitter_px=args.jitter,
            save_every=10**6,
        ),
        on_step=lambda s, l: print(f"step {s} loss {l:.4f} {time.perf_counter() - t:.0f} s", flush=True),  # noqa: E741
    )
    timings["finetune_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    export_all(load_model(work / "new.pt"), work / "graphs-new")
    after = _score(work / "graphs-new", held_out)
    timings["score_new_s"] = round(time.perf_counter() - t, 1)
    losses = result.losses
    print(
        json.dumps(
            {
                "steps": args.steps,
                "clip_length": args.clip_length,
                "loss_first5": round(float(np.mean(losses[:5])), 4),
                "loss_last5": round(float(np.mean(losses[-5:])), 4),
                "before": before,
                "after": after,
                **timings,
            }
        )
    )


if __name__ == "__main__":
    main()
