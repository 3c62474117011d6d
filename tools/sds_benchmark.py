"""Chapter 7's text-to-3D benchmark: score distillation from many seeds, each run measured.

    python -m tools.sds_benchmark                          # 20 seeds of the cylinder, defaults
    python -m tools.sds_benchmark --seeds 10 --demos cylinder cone --guidance 100 --out sds.json

Each run goes through the artifact cache (``vlmlib.sds.optimise_cached``), so a notebook that asks
for the same settings and seeds loads them. Prints one line per run and a summary; ``--out`` writes
everything :func:`vlmlib.sds.benchmark` returns as JSON. About 10 s a run on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from vlmlib import sds as S


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--demos", nargs="+", default=["cylinder"], choices=list(S.DEMOS))
    p.add_argument("--steps", type=int, default=S.SDSConfig.steps)
    p.add_argument("--guidance", type=float, default=S.SDSConfig.guidance)
    p.add_argument("--lr", type=float, default=S.SDSConfig.lr)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = S.benchmark(args.seeds, args.demos, first_seed=args.first_seed, steps=args.steps,
                         guidance=args.guidance, lr=args.lr)
    for name, d in result["demos"].items():
        iou = ", ".join(f"{k} {v:.2f}" for k, v in d["iou"].items())
        start = ", ".join(f"{k} {v:.2f}" for k, v in d["iou_start"].items())
        views = ", ".join(f"{k} {v:.0%}" for k, v in d["views"].items())
        print(f"{name}: every view right in {d['all_views']:.0%} of {result['n_seeds']} runs (bar ≥ 80%); "
              f"per view {views}; IoU {iou} (the starting blob: {start}); {d['seconds_per_run']:.1f} s a run")
        for th, ious in d["iou_by_threshold"].items():
            print(f"  IoU at opacity >= {th}: " + ", ".join(f"{k} {v:.2f}" for k, v in ious.items()))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
