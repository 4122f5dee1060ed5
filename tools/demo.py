"""The embedded demo, end to end on 2 CPU cores: PSL's Table 2 in miniature on an AudioSet-like synthetic
world. A teacher trains on weak 10 s labels of the large split; students train on its balanced subset from
weak 10 s labels (the paper's baseline) or from the teacher's labels of their 10/5/2 s chunks, made inline;
the table compares them on eval (clip mAP and d′, the paper's metrics, and 2 s chunk mAP against the true
chunk labels). A clip is scored both ways: one forward pass over the whole clip (PSL's evaluation) and the max
and mean over chunks of the row's training length (PSL's inference tool takes the max). Each row states its
budget: optimizer steps, epochs trained, and the passes over its own training chunks they make.

    python -m tools.demo [--table quick|full] [--seeds 0 1 2] [--processes 2]

``quick`` (the default, within 15 min on 2 cores) trains the teacher, weak-10s and PSL-2s; ``full`` adds PSL-10s,
PSL-5s, teacher-student 2 s (α = 0.5), an oracle 2 s student trained on the true chunk labels (what perfect
pseudo labels would give) and weak-2s (chunks that inherit their clip's label). Finished runs are reused.
Writes runs/demo_table.md and runs/demo_table.png (clip and chunk mAP per row, with the seeds' spread).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tools.launch import cpu_launch
from trainer.config import load_config
from trainer.data.datasets import resolve_splits
from trainer.data.features import build_frontend
from trainer.evaluate import training_chunking
from trainer.rundir import RunDir

DATA = Path("data/demo")
SPLITS = ("unbalanced", "balanced", "valid", "eval")
# (name, title): configs/{name}.yaml, runs/{name}_seed{S}
ROWS = [("demo", "teacher (unbalanced, weak 10 s)"), ("demo_weak_10s", "weak-10s"), ("demo_psl_10s", "PSL-10s"),
        ("demo_psl_5s", "PSL-5s"), ("demo_psl_2s", "PSL-2s"), ("demo_ts_2s", "teacher-student 2 s (α = 0.5)"),
        ("demo_oracle_2s", "oracle 2 s (true chunk labels)"), ("demo_weak_2s", "weak-2s (chunks inherit)")]
TABLES = {"quick": ["demo", "demo_weak_10s", "demo_psl_2s"], "full": [name for name, _ in ROWS]}


def sh(*args: str, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, env=env)


def launch(config: str, overrides: list[str], processes: int) -> None:
    cmd, env = cpu_launch("trainer/run.py", [config, *overrides], processes)
    sh(*cmd, env=env)


def build_data(clips: int, eval_clips: int) -> None:
    if not (DATA / "eval.json").exists():
        print(f"\n== data: the synthetic world ({clips} training clips, {eval_clips} eval clips) into {DATA}",
              flush=True)
        sh(sys.executable, "-m", "tools.make_synthetic", "--out", str(DATA), "--clips", str(clips),
           "--eval-clips", str(eval_clips))
    for split in SPLITS:
        out = Path(f"shards/demo_{split}")
        if not (out / "dataset.json").exists():
            print(f"\n== shards: {out}, built from {DATA / split}.json and verified", flush=True)
            sh(sys.executable, "-m", "tools.build_shards", str(DATA / f"{split}.json"), "--out", str(out),
               "--labels", str(DATA / "class_labels_indices.csv"), "--shard-samples", "200", "--no-progress")
            sh(sys.executable, "-m", "tools.verify_shards", str(out))


def summary(name: str, seed: int) -> dict:
    return json.loads(RunDir(Path("runs") / f"{name}_seed{seed}").summary.read_text())


def passes(run: Path, steps: int, processes: int) -> float:
    """Passes over the run's own training chunks that ``steps`` optimizer steps make (draws / chunks)."""
    cfg = load_config(RunDir(run).config, check_paths=False)
    clips = len(resolve_splits(cfg.data).train)
    frontend = build_frontend(cfg.features)
    per_clip = training_chunking(frontend, cfg.psl, cfg.features.clip_seconds).count(frontend.num_frames)
    per_draw = min(cfg.psl.chunks_per_clip or per_clip, per_clip)
    batch = cfg.data.global_batch_size or cfg.data.batch_size * processes * cfg.optim.grad_accum
    return steps * batch * per_draw / (clips * per_clip)


def _stat(vals: list[float]) -> tuple[float, float]:
    """Mean and half the range."""
    return sum(vals) / len(vals), (max(vals) - min(vals)) / 2


def table(names: list[str], seeds: list[int], processes: int = 2) -> tuple[str, dict]:
    """The markdown table and {name: {metric: (mean, half-range)}}."""
    titles = dict(ROWS)
    stats: dict = {}
    lines = ["| model | clip mAP (whole clip) | max over chunks | mean over chunks | clip d′ | 2 s chunk mAP | "
             "optimizer steps | epochs | passes over its chunks |", "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        runs = [summary(name, s) for s in seeds]
        stats[name] = {"clip": _stat([r["best_single"]["mAP"] for r in runs]),
                       "dprime": _stat([r["best_single"]["dprime"] for r in runs]),
                       "chunk": _stat([r["chunk_level"]["best_single"]["mAP"] for r in runs])}
        for pooling in ("max", "mean"):  # runs finished before clips were scored both ways lack them
            if all("best_single_chunk_pooled" in r for r in runs):
                stats[name][pooling] = _stat([r["best_single_chunk_pooled"][pooling]["mAP"] for r in runs])
        cell = {k: f"{m:.3f}" + (f" ± {h:.3f}" if len(seeds) > 1 else "") for k, (m, h) in stats[name].items()}
        pooled = {p: cell.get(p, "–") + (f" ({runs[0]['best_single_chunk_pooled']['chunk_seconds']:g} s)"
                                         if p in cell else "") for p in ("max", "mean")}
        steps = [r.get("optimizer_steps") for r in runs]
        budget = ["/".join(str(n) for n in steps) if None not in steps else "–",
                  "/".join(str(r["epochs_trained"]) for r in runs),
                  "/".join(f"{passes(Path('runs') / f'{name}_seed{s}', n, processes):.1f}" for s, n in zip(seeds, steps))
                  if None not in steps else "–"]
        lines.append(f"| {titles[name]} | {cell['clip']} | {pooled['max']} | {pooled['mean']} | {cell['dprime']} | "
                     f"{cell['chunk']} | {' | '.join(budget)} |")
    teacher_chunks = [r["chunk_level"]["teacher"]["mAP"] for r in (summary("demo_psl_2s", s) for s in seeds)
                      if "teacher" in r.get("chunk_level", {})] if "demo_psl_2s" in names else []
    if teacher_chunks:
        m, h = _stat(teacher_chunks)
        lines.append(f"\nPseudo labels (the teacher on 2 s chunks of eval): chunk mAP {m:.3f}"
                     + (f" ± {h:.3f}" if len(seeds) > 1 else ""))
    lines.append(f"\nSeeds {', '.join(map(str, seeds))}" + (" (mean ± half the range)" if len(seeds) > 1 else "")
                 + "; optimizer steps, epochs and passes over the row's own training chunks: per seed. Max / mean "
                 "over chunks of the row's training length (in brackets).")
    return "\n".join(lines), stats


def plot(stats: dict, seeds: list[int], out: Path) -> None:
    """Clip and 2 s chunk mAP per row, error bars spanning the seeds' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = dict(ROWS)
    names = list(stats)
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 4.5))
    for k, (metric, label) in enumerate((("clip", "clip mAP"), ("chunk", "2 s chunk mAP"))):
        means, halves = zip(*(stats[n][metric] for n in names))
        ax.bar([i + 0.4 * k for i in range(len(names))], means, 0.4, yerr=halves, capsize=3, label=label)
    ax.set_xticks([i + 0.2 for i in range(len(names))], [titles[n].replace(" (", "\n(") for n in names], fontsize=8)
    ax.set_ylabel("mAP on eval")
    ax.set_title(f"PSL on the synthetic demo, seeds {', '.join(map(str, seeds))}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", choices=sorted(TABLES), default="quick",
                   help="quick: teacher, weak-10s, PSL-2s; full: all eight rows (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="train every row once per seed; the table shows mean ± half the range (default: 0)")
    p.add_argument("--processes", type=int, default=2,
                   help="Accelerate processes (gloo on CPU; default: %(default)s)")
    p.add_argument("--clips", type=int, default=1200,
                   help="clips of the large (unbalanced) split (default: %(default)s)")
    p.add_argument("--eval-clips", type=int, default=300, help="clips of the eval split (default: %(default)s)")
    args = p.parse_args(argv)
    names, titles = TABLES[args.table], dict(ROWS)
    print(f"Demo ({args.table} table): {', '.join(titles[n] for n in names)}; seed(s) "
          f"{', '.join(map(str, args.seeds))}; {args.processes} CPU processes.\nData in {DATA}/, shards in shards/, "
          f"runs in runs/; what exists is reused.", flush=True)
    build_data(args.clips, args.eval_clips)
    done, total = 0, len(args.seeds) * len(names)
    for seed in args.seeds:
        for name in names:
            done += 1
            header = f"[{done}/{total}] {titles[name]}, seed {seed}: runs/{name}_seed{seed}"
            if RunDir(Path("runs") / f"{name}_seed{seed}").summary.exists():
                print(f"{header} is complete: reused (delete it to train again)")
                continue
            print(f"\n== {header} (configs/{name}.yaml; a progress bar per epoch, then a line of its metrics)",
                  flush=True)
            overrides = [f"run.name={name}_seed{seed}", f"run.seed={seed}"]
            if (Path("runs") / f"{name}_seed{seed}").exists():  # an interrupted run: continue it
                overrides.append("run.resume=true")
            if name not in ("demo", "demo_weak_10s", "demo_weak_2s", "demo_oracle_2s"):
                overrides.append(f"psl.teacher=runs/demo_seed{seed}")
            launch(f"configs/{name}.yaml", overrides, args.processes)
    text, stats = table(names, args.seeds, args.processes)
    Path("runs/demo_table.md").write_text(text + "\n")
    plot(stats, args.seeds, Path("runs/demo_table.png"))
    print("\n" + text + "\n\n(runs/demo_table.md, runs/demo_table.png)")
    print(f"\nHow to read it: mAP and d′ on the {args.eval_clips} eval clips, higher is better. Clip scores use the\n"
          "clips' weak labels (the paper's metrics): whole clip, and max / mean over chunks of the row's training\n"
          "length; 2 s chunk mAP uses the true labels of every 2 s chunk, what pseudo strong labels are for. The\n"
          "budget columns say how much training each row got. The paper's claim to look for: PSL-2s above weak-10s.\n"
          "Results over three seeds and what they show: docs/psl.md.")


if __name__ == "__main__":
    main()
