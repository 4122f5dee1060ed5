"""The missing-label sweep (issue 28): does PSL's gain over weak 10 s labels grow with the rate of missing weak
labels? For each world trained by ``python -m tools.demo --table sweep --missing M --seeds ...``, prints per seed
(those whose runs have finished)
PSL-10s − weak-10s and PSL-2s − weak-10s in whole-clip mAP on eval, against the world's AudioSet-like eval labels
and against the true labels of the same clips, then mean ± half the range over the seeds.

    python -m tools.experiments.missing_sweep [--missing 0 half audioset] [--seeds 0 1 2] [--teacher-ratio 30]

``--teacher-ratio R`` adds the AudioSet-like world whose teacher saw R × the students' clips
(``python -m tools.demo --teacher-ratio R --table sweep``; the same student clips, the default's ~10×).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from tools.demo import World, _stat, summary, true_label_scores
from trainer.rundir import RunDir

ROWS = {"PSL-10s": "demo_psl_10s", "PSL-2s": "demo_psl_2s"}
BASE = "demo_weak_10s"


def clip_maps(world: World, name: str, seed: int) -> tuple[float, float]:
    """Whole-clip mAP on eval of ``name``'s run of ``seed``: (AudioSet-like labels, true labels)."""
    run = world.runs / f"{name}_seed{seed}"
    return summary(run)["best_single"]["mAP"], true_label_scores(run, world.shards("eval_clean"))["whole"]["mAP"]


def finished(world: World, seed: int) -> bool:
    return all(RunDir(world.runs / f"{name}_seed{seed}").summary.exists() for name in (BASE, *ROWS.values()))


def sweep(missing: list[str], seeds: list[int], ratios: Sequence[float] = ()) -> str:
    """The markdown table: a row per world, comparison and eval label set, with the differences per seed (the
    seeds whose three runs have finished in that world) and their mean ± half-range. ``ratios``: the AudioSet-like
    worlds with those teacher-data ratios, after the ``missing`` ones."""
    lines = ["| missing labels | comparison | eval labels | per seed (seed) | mean ± half range |", "|---|---|---|---|---|"]
    for world in [World(missing=m) for m in missing] + [World(teacher_ratio=r) for r in ratios]:
        m = world.missing + (f", teacher {world.teacher_ratio:g}× the students' clips" if world.teacher_ratio else "")
        done = [s for s in seeds if finished(world, s)]
        if not done:
            continue
        base = {s: clip_maps(world, BASE, s) for s in done}
        for title, name in ROWS.items():
            rows = {s: clip_maps(world, name, s) for s in done}
            for k, labels in enumerate(("AudioSet-like", "true")):
                diffs = [rows[s][k] - base[s][k] for s in done]
                mean, half = _stat(diffs)
                lines.append(f"| {m} | {title} − weak-10s | {labels} | "
                             + ", ".join(f"{d:+.3f} ({s})" for d, s in zip(diffs, done)) + f" | {mean:+.3f} ± {half:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--missing", nargs="+", default=["0", "half", "audioset"], choices=["0", "half", "audioset"],
                   help="the worlds to compare (default: all three)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--teacher-ratio", type=float, nargs="*", default=[],
                   help="also the AudioSet-like worlds whose teacher saw this many clips per student clip "
                        "(default: none)")
    args = p.parse_args(argv)
    print(sweep(args.missing, args.seeds, args.teacher_ratio))


if __name__ == "__main__":
    main()
