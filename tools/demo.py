"""The embedded demo, end to end on 2 CPU cores: synthetic audio → shards → teacher on weak 10 s labels →
a 2 s-chunk student on weak labels (baseline) → a PSL-2s student labelled inline by the teacher → one table.

    python -m tools.demo [--seeds 0 1 2] [--processes 2]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tools.launch import cpu_launch

DATA = Path("data/demo")
RUNS = [("teacher (weak 10 s)", "demo"), ("weak-2s baseline", "demo_weak_2s"), ("PSL-2s", "demo_psl_2s")]


def sh(*args: str, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, env=env)


def launch(config: str, overrides: list[str], processes: int) -> None:
    cmd, env = cpu_launch("trainer/run.py", [config, *overrides], processes)
    sh(*cmd, env=env)


def build_data(clips: int, eval_clips: int) -> None:
    if not (DATA / "train.json").exists():
        sh(sys.executable, "-m", "tools.make_synthetic", "--out", str(DATA), "--clips", str(clips),
           "--eval-clips", str(eval_clips))
    for split in ("train", "eval"):
        out = Path(f"shards/demo_{split}")
        if not (out / "dataset.json").exists():
            sh(sys.executable, "-m", "tools.build_shards", str(DATA / f"{split}.json"), "--out", str(out),
               "--labels", str(DATA / "class_labels_indices.csv"), "--shard-samples", "100")
            sh(sys.executable, "-m", "tools.verify_shards", str(out))


def table(seeds: list[int]) -> str:
    rows = []
    for title, name in RUNS:
        summaries = [json.loads((Path("runs") / f"{name}_seed{s}" / "summary.json").read_text()) for s in seeds]

        def col(get) -> str:
            vals = [get(s) for s in summaries]
            mean = sum(vals) / len(vals)
            spread = f" ± {(max(vals) - min(vals)) / 2:.3f}" if len(vals) > 1 else ""
            return f"{mean:.3f}{spread}"

        rows.append([title, col(lambda s: s["best_single"]["mAP"]), col(lambda s: s["best_single"]["dprime"]),
                     col(lambda s: s["chunk_level"]["best_single"]["mAP"])])
    psl = [json.loads((Path("runs") / f"demo_psl_2s_seed{s}" / "summary.json").read_text()) for s in seeds]
    pseudo = sum(s["chunk_level"]["teacher"]["mAP"] for s in psl) / len(psl)
    lines = [f"{'model':<22}{'clip mAP':>16}{'clip d′':>16}{'2 s chunk mAP':>18}"]
    lines += [f"{r[0]:<22}{r[1]:>16}{r[2]:>16}{r[3]:>18}" for r in rows]
    lines.append(f"pseudo labels (teacher on 2 s chunks): chunk mAP {pseudo:.3f}")
    lines.append(f"seeds: {', '.join(map(str, seeds))} (± is half the range)")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--processes", type=int, default=2, help="Accelerate processes (gloo on CPU)")
    p.add_argument("--clips", type=int, default=600)
    p.add_argument("--eval-clips", type=int, default=200)
    args = p.parse_args()
    build_data(args.clips, args.eval_clips)
    for seed in args.seeds:
        for _, name in RUNS:
            if (Path("runs") / f"{name}_seed{seed}" / "summary.json").exists():
                print(f"runs/{name}_seed{seed} is complete: reused (delete it to train again)")
                continue
            overrides = [f"run.name={name}_seed{seed}", f"run.seed={seed}"]
            if name == "demo_psl_2s":
                overrides.append(f"psl.teacher=runs/demo_seed{seed}")
            launch(f"configs/{name}.yaml", overrides, args.processes)
    print("\n" + table(args.seeds))


if __name__ == "__main__":
    main()
