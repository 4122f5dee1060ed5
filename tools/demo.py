"""The embedded demo, end to end on 2 CPU cores: PSL's Table 2 in miniature on an AudioSet-like synthetic
world. A teacher trains on weak 10 s labels of the large split; students train on its balanced subset from
weak 10 s labels (the paper's baseline) or from the teacher's labels of their 10/5/2 s chunks, made inline.
The world's weak labels carry AudioSet's errors (missing labels at rates measured from AudioSet's own label
sets, spurious labels; ``tools.make_synthetic --world audioset-like``) and its true labels are kept beside them,
so every clip score is given against both: the AudioSet-like eval labels the paper's numbers are measured on,
and the true ones. A clip is scored both ways: one forward pass over the whole clip (PSL's evaluation) and the
max and mean over chunks of the row's training length (PSL's inference tool takes the max); 2 s chunk mAP is
against the true chunk labels. Each row states its budget: optimizer steps, epochs trained, and the passes over
its own training chunks they make.

    python -m tools.demo [--table quick|sweep|full] [--seeds 0 1 2] [--missing audioset|half|0] [--world clean]
                          [--teacher-ratio R]

``quick`` (the default, within 15 min on 2 cores) trains the teacher, weak-10s and PSL-2s; ``sweep`` adds PSL-10s
(the rows the missing-label sweep compares); ``full`` adds PSL-5s, teacher-student 2 s (α = 0.5), an oracle 2 s
student trained on the true chunk labels (what perfect pseudo labels would give) and weak-2s (chunks that inherit
their clip's label). ``--missing`` scales the missing-label rates (0: none; the default: AudioSet's) and
``--world clean`` is the control with every label true; ``--teacher-ratio R`` gives the teacher R × the students'
clips (PSL's ~92×; the default ~10×); each world has its own data, shards and runs. Finished
runs are reused. Writes the table as markdown and a plot beside the runs (runs/demo_table.md for the default
world).

The default world's teachers are shipped (``teachers/demo_seed{S}``: weights, config, summary and eval
predictions, with the commit and command that trained them), as PSL ships its teacher: training one to its plateau
takes longer than the whole quick demo may. ``--train-teacher`` trains them here instead, and ``--ship-teachers``
copies finished teacher runs into ``teachers/`` (the one command that regenerates them, see teachers/README.md).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.launch import cpu_launch
from trainer.config import load_config
from trainer.data.datasets import resolve_splits
from trainer.data.features import build_frontend
from trainer.data.manifest import Vocabulary, read_manifest
from trainer.evaluate import training_chunking
from trainer.metrics import tagging_metrics
from trainer.rundir import RunDir

SPLITS = ("unbalanced", "balanced", "valid", "eval")
# (name, title): configs/{name}.yaml, {runs}/{name}_seed{S}
ROWS = [("demo", "teacher (unbalanced, weak 10 s)"), ("demo_weak_10s", "weak-10s"), ("demo_psl_10s", "PSL-10s"),
        ("demo_psl_5s", "PSL-5s"), ("demo_psl_2s", "PSL-2s"), ("demo_ts_2s", "teacher-student 2 s (α = 0.5)"),
        ("demo_oracle_2s", "oracle 2 s (true chunk labels)"), ("demo_weak_2s", "weak-2s (chunks inherit)")]
TABLES = {"quick": ["demo", "demo_weak_10s", "demo_psl_2s"],
          "sweep": ["demo", "demo_weak_10s", "demo_psl_10s", "demo_psl_2s"], "full": [name for name, _ in ROWS]}
TEACHERLESS = ("demo", "demo_weak_10s", "demo_weak_2s", "demo_oracle_2s")
TEACHERS = Path("teachers")  # the default world's shipped teachers, teachers/demo_seed{S}
# what a shipped teacher keeps of its run: what a PSL student rebuilds it from, and what the table reads
# clip scores: (summary.json's result, the eval predictions' tag it was computed from, the column's title)
SCORES = [("whole", "best", "whole clip"), ("max", "best_chunk_max", "max over chunks"),
          ("mean", "best_chunk_mean", "mean over chunks")]
_HERE = RunDir(Path())
TEACHER_FILES = tuple(str(p) for p in (_HERE.config, _HERE.vocabulary, _HERE.weights("best"), _HERE.summary,
                                       *(_HERE.predictions("eval", tag) for _, tag, _ in SCORES)))


@dataclass(frozen=True)
class World:
    """One synthetic world and where its data, shards and runs live. The default world (AudioSet-like, AudioSet's
    missing-label rates) uses the paths the demo's configs name; every other world its own, passed as overrides."""

    kind: str = "audioset-like"
    missing: str = "audioset"
    teacher_ratio: float | None = None  # the large split's clips per balanced-subset clip (None: --clips)

    @property
    def tag(self) -> str:
        parts = ["clean"] if self.kind == "clean" else [] if self.missing == "audioset" else [f"missing-{self.missing}"]
        return "_".join(parts + ([f"ratio-{self.teacher_ratio:g}"] if self.teacher_ratio else []))

    @property
    def data(self) -> Path:
        return Path("data") / ("demo" + (f"_{self.tag}" if self.tag else ""))

    @property
    def runs(self) -> Path:
        return Path("runs") / (f"demo_{self.tag}" if self.tag else "")

    @property
    def splits(self) -> tuple[str, ...]:
        """The shard sets: with label errors, eval's true labels too (same clips)."""
        return SPLITS + (("eval_clean",) if self.kind != "clean" else ())

    def shards(self, split: str) -> Path:
        return Path("shards") / ("demo" + (f"_{self.tag}" if self.tag else "") + f"_{split}")

    def generate(self, clips: int, eval_clips: int) -> list[str]:
        """tools.make_synthetic's arguments for this world."""
        args = ["--out", str(self.data), "--clips", str(clips), "--eval-clips", str(eval_clips), "--world", self.kind]
        args += ["--teacher-ratio", f"{self.teacher_ratio:g}"] if self.teacher_ratio else []
        return args + (["--missing", self.missing] if self.kind != "clean" else [])

    def overrides(self, name: str, clips: int) -> list[str]:
        """Where row ``name``'s configs must look in this world (nothing for the default world). With a teacher
        ratio the teacher draws ``clips`` (--clips) a epoch, so it takes the default world's teacher's steps over
        more distinct clips."""
        if not self.tag:
            return []
        train, valid = ("unbalanced", "valid") if name == "demo" else ("balanced", "balanced")
        out = [f"run.dir={self.runs}", f"data.train=[{self.shards(train)}]", f"data.valid=[{self.shards(valid)}]",
               f"data.eval=[{self.shards('eval')}]", f"evaluation.strong_labels={self.data / 'eval_strong.tsv'}"]
        out += [f"data.num_samples={clips}"] if name == "demo" and self.teacher_ratio else []
        return out + ([f"psl.oracle={self.data / 'balanced_strong.tsv'}"] if name == "demo_oracle_2s" else [])


def sh(*args: str, env: dict[str, str] | None = None) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, env=env)


def launch(config: str, overrides: list[str], processes: int) -> None:
    cmd, env = cpu_launch("trainer/run.py", [config, *overrides], processes)
    sh(*cmd, env=env)


def build_data(world: World, clips: int, eval_clips: int, splits: tuple[str, ...]) -> None:
    """The world's data if missing, and shards of ``splits`` (each verified)."""
    if not (world.data / "eval.json").exists():
        print(f"\n== data: the synthetic {world.kind} world ({clips} training clips, {eval_clips} eval clips) into "
              f"{world.data}", flush=True)
        sh(sys.executable, "-m", "tools.make_synthetic", *world.generate(clips, eval_clips))
    for split in splits:
        out = world.shards(split)
        if not (out / "dataset.json").exists():
            print(f"\n== shards: {out}, built from {world.data / split}.json and verified", flush=True)
            sh(sys.executable, "-m", "tools.build_shards", str(world.data / f"{split}.json"), "--out", str(out),
               "--labels", str(world.data / "class_labels_indices.csv"), "--shard-samples", "200", "--no-progress")
            sh(sys.executable, "-m", "tools.verify_shards", str(out))


def summary(run: Path) -> dict:
    return json.loads(RunDir(run).summary.read_text())


def passes(run: Path, steps: int, processes: int) -> float | None:
    """Passes over the run's own training chunks that ``steps`` optimizer steps make (draws / chunks); None where
    the run's training data is not here (a shipped teacher: the quick demo builds no teacher-only shards)."""
    cfg = load_config(RunDir(run).config, check_paths=False)
    try:
        clips = len(resolve_splits(cfg.data).train)
    except FileNotFoundError:
        return None
    frontend = build_frontend(cfg.features)
    per_clip = training_chunking(frontend, cfg.psl, cfg.features.clip_seconds).count(frontend.num_frames)
    per_draw = min(cfg.psl.chunks_per_clip or per_clip, per_clip)
    batch = cfg.data.global_batch_size or cfg.data.batch_size * processes * cfg.optim.grad_accum
    return steps * batch * per_draw / (clips * per_clip)


def true_label_scores(run: Path, truth: Path) -> dict[str, dict]:
    """The run's eval clip scores (whole clip, max and mean over chunks) against the true labels of the same clips
    (the shards at ``truth``), from the predictions the run saved."""
    table = read_manifest(truth)
    names = Vocabulary.load(truth / "class_labels_indices.csv").names
    out = {}
    for score, tag, _ in SCORES:
        path = RunDir(run).predictions("eval", tag)
        if path.exists():
            pred = np.load(path, allow_pickle=False)
            rows = table.find(pred["keys"].tolist())
            missing = [k for k in pred["keys"].tolist() if k not in rows]
            if missing:
                raise ValueError(f"{path}: {len(missing)} clips not in {truth} (e.g. {missing[0]})")
            out[score] = tagging_metrics(pred["probs"], table.multi_hot([rows[k] for k in pred["keys"]], len(names)),
                                         names)
    return out


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _stat(vals: list[float]) -> tuple[float, float]:
    """Mean and half the range."""
    return sum(vals) / len(vals), (max(vals) - min(vals)) / 2


def _row_stats(runs: list[dict], truths: list[dict] | None) -> dict[str, tuple[float, float]]:
    """{metric: (mean, half-range)} over the seeds: clip mAP each way against the eval labels (and the true ones:
    ``true_*``), d′, 2 s chunk mAP."""
    stats = {"whole": _stat([r["best_single"]["mAP"] for r in runs]),
             "dprime": _stat([r["best_single"]["dprime"] for r in runs]),
             "chunk": _stat([r["chunk_level"]["best_single"]["mAP"] for r in runs])}
    for pooling in ("max", "mean"):  # runs finished before clips were scored both ways lack them
        if all("best_single_chunk_pooled" in r for r in runs):
            stats[pooling] = _stat([r["best_single_chunk_pooled"][pooling]["mAP"] for r in runs])
    for score, _, _ in SCORES:
        if truths and all(score in t for t in truths):
            stats[f"true_{score}"] = _stat([t[score]["mAP"] for t in truths])
    return stats


def table(names: list[str], seeds: list[int], processes: int = 2, world: World = World()) -> tuple[str, dict]:
    """The markdown table and {name: {metric: (mean, half-range)}}."""
    titles = dict(ROWS)
    truth = world.shards("eval_clean") if "eval_clean" in world.splits else None
    both = truth is not None and (truth / "dataset.json").exists()
    label_sets = " (AudioSet-like / true eval labels)" if both else ""
    lines = [f"| model | {' | '.join(t + label_sets for _, _, t in SCORES)} | clip d′ | 2 s chunk mAP | "
             "optimizer steps | epochs | passes over its chunks |", "|---|---|---|---|---|---|---|---|---|"]
    stats: dict = {}
    for name in names:
        dirs = [world.runs / f"{name}_seed{s}" for s in seeds]
        runs = [summary(d) for d in dirs]
        stats[name] = _row_stats(runs, [true_label_scores(d, truth) for d in dirs] if both else None)
        cell = {k: f"{m:.3f}" + (f" ± {h:.3f}" if len(seeds) > 1 else "") for k, (m, h) in stats[name].items()}
        scores = []
        for score, _, _ in SCORES:
            text = cell.get(score, "–") + (f" / {cell['true_' + score]}" if f"true_{score}" in cell else "")
            if score != "whole" and score in cell:
                text += f" ({runs[0]['best_single_chunk_pooled']['chunk_seconds']:g} s)"
            scores.append(text)
        steps = [r.get("optimizer_steps") for r in runs]
        budget = ["/".join(str(n) for n in steps) if None not in steps else "–",
                  "/".join(str(r["epochs_trained"]) for r in runs),
                  "/".join(_fmt(passes(d, n, processes)) for d, n in zip(dirs, steps)) if None not in steps else "–"]
        lines.append(f"| {titles[name]} | {' | '.join(scores)} | {cell['dprime']} | {cell['chunk']} | "
                     f"{' | '.join(budget)} |")
    teacher_chunks = [r["chunk_level"]["teacher"]["mAP"] for r in
                      (summary(world.runs / f"demo_psl_2s_seed{s}") for s in seeds)
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
    metrics = [(m, label) for m, label in (("whole", "clip mAP (AudioSet-like labels)"),
                                           ("true_whole", "clip mAP (true labels)"), ("chunk", "2 s chunk mAP"))
               if all(m in stats[n] for n in names)]
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2, 4.5))
    for k, (metric, label) in enumerate(metrics):
        means, halves = zip(*(stats[n][metric] for n in names))
        ax.bar([i + width * k for i in range(len(names))], means, width, yerr=halves, capsize=3, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], [titles[n].replace(" (", "\n(") for n in names],
                  fontsize=8)
    ax.set_ylabel("mAP on eval")
    ax.set_title(f"PSL on the synthetic demo, seeds {', '.join(map(str, seeds))}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _copy_files(src: Path, dst: Path, files: tuple[str, ...]) -> None:
    for name in files:
        if (src / name).exists():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / name, dst / name)


def shipped_teacher(world: World, seed: int) -> Path | None:
    """The shipped teacher of ``seed`` (the default world only), copied to the world's teacher run unless that run
    exists; None where there is none to use (another world, or no teacher shipped for this seed), or where the
    teacher run exists and is not the shipped one."""
    run, shipped = world.runs / f"demo_seed{seed}", TEACHERS / f"demo_seed{seed}"
    if world.tag or not RunDir(shipped).weights("best").is_file():
        return None
    if not run.exists():
        _copy_files(shipped, run, TEACHER_FILES + ("PROVENANCE.json",))
    return shipped if (run / "PROVENANCE.json").is_file() else None


def ship_teachers(seeds: list[int]) -> None:
    """Copy the default world's finished teacher runs into teachers/, with the commit that trained them."""
    for seed in seeds:
        run, out = World().runs / f"demo_seed{seed}", TEACHERS / f"demo_seed{seed}"
        if not RunDir(run).summary.exists():
            raise SystemExit(f"{run}: no finished teacher run to ship (train it: --train-teacher --seeds {seed})")
        if out.exists():
            raise SystemExit(f"{out} exists: remove it first (git rm -r {out}) to ship a new teacher")
        _copy_files(run, out, TEACHER_FILES)
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        (out / "PROVENANCE.json").write_text(json.dumps({
            "seed": seed, "commit": commit or None, "world": "python -m tools.demo's default world (data/demo)",
            "command": f"python -m tools.demo --train-teacher --seeds {seed} && "
                       f"python -m tools.demo --ship-teachers --seeds {seed}"}, indent=1) + "\n")
        print(f"shipped {run} as {out}")


def train_rows(world: World, names: list[str], seeds: list[int], processes: int, train_teacher: bool,
               clips: int) -> None:
    titles = dict(ROWS)
    done, total = 0, len(seeds) * len(names)
    for seed in seeds:
        for name in names:
            done += 1
            run = world.runs / f"{name}_seed{seed}"
            header = f"[{done}/{total}] {titles[name]}, seed {seed}: {run}"
            shipped = None if name != "demo" or train_teacher else shipped_teacher(world, seed)
            if shipped is not None:
                print(f"{header}: the shipped teacher {shipped} (how it was trained: {shipped / 'PROVENANCE.json'}; "
                      "--train-teacher trains it here)")
                continue
            if RunDir(run).summary.exists():
                print(f"{header} is complete: reused (delete it to train again)")
                continue
            print(f"\n== {header} (configs/{name}.yaml; a progress bar per epoch, then a line of its metrics)",
                  flush=True)
            overrides = [f"run.name={name}_seed{seed}", f"run.seed={seed}", *world.overrides(name, clips)]
            if run.exists():  # an interrupted run: continue it
                overrides.append("run.resume=true")
            if name not in TEACHERLESS:
                overrides.append(f"psl.teacher={world.runs / f'demo_seed{seed}'}")
            launch(f"configs/{name}.yaml", overrides, processes)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", choices=sorted(TABLES), default="quick",
                   help="quick: teacher, weak-10s, PSL-2s; sweep: and PSL-10s; full: all eight rows "
                        "(default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="train every row once per seed; the table shows mean ± half the range (default: 0)")
    p.add_argument("--world", choices=["audioset-like", "clean"], default="audioset-like",
                   help="audioset-like: weak labels with AudioSet's errors; clean: every label true, the control "
                        "(default: %(default)s)")
    p.add_argument("--missing", choices=["0", "half", "audioset"], default="audioset",
                   help="missing weak labels at none, half or all of the rates measured from AudioSet "
                        "(audioset-like world; default: %(default)s)")
    p.add_argument("--teacher-ratio", type=float, default=None,
                   help="size the large split, the teacher's, to this many clips per balanced-subset clip (the "
                        "students' clips stay the same; the teacher takes the same steps as at the default, about "
                        "10; PSL's is about 92) and give the world its own data, shards and runs (default: --clips)")
    p.add_argument("--processes", type=int, default=2,
                   help="Accelerate processes (gloo on CPU; default: %(default)s)")
    p.add_argument("--clips", type=int, default=1200,
                   help="clips of the large (unbalanced) split (default: %(default)s)")
    p.add_argument("--eval-clips", type=int, default=300, help="clips of the eval split (default: %(default)s)")
    p.add_argument("--train-teacher", action="store_true",
                   help="train the default world's teachers here instead of using the shipped ones")
    p.add_argument("--ship-teachers", action="store_true",
                   help="copy the default world's finished teacher runs of --seeds into teachers/ and stop")
    args = p.parse_args(argv)
    if args.ship_teachers:
        ship_teachers(args.seeds)
        return
    world = World(args.world, args.missing, args.teacher_ratio)
    names, titles = TABLES[args.table], dict(ROWS)
    print(f"Demo ({args.table} table) in the {world.kind} world"
          + (f" (missing labels: {world.missing})" if world.kind != "clean" else "")
          + (f" (teacher's clips: {world.teacher_ratio:g}× the students')" if world.teacher_ratio else "")
          + f": {', '.join(titles[n] for n in names)}; seed(s) {', '.join(map(str, args.seeds))}; "
          f"{args.processes} CPU processes.\nData in {world.data}/, shards in shards/, runs in {world.runs}/; what "
          "exists is reused.", flush=True)
    teachers_shipped = not args.train_teacher and all(shipped_teacher(world, s) for s in args.seeds)
    teacher_only = ("unbalanced", "valid") if teachers_shipped or "demo" not in names else ()
    build_data(world, args.clips, args.eval_clips, tuple(s for s in world.splits if s not in teacher_only))
    train_rows(world, names, args.seeds, args.processes, args.train_teacher, args.clips)
    text, stats = table(names, args.seeds, args.processes, world)
    (world.runs / "demo_table.md").write_text(text + "\n")
    plot(stats, args.seeds, world.runs / "demo_table.png")
    print(f"\n{text}\n\n({world.runs / 'demo_table.md'}, {world.runs / 'demo_table.png'})")
    print(f"\nHow to read it: mAP and d′ on the {args.eval_clips} eval clips, higher is better. Clip mAP against the\n"
          "AudioSet-like eval labels (missing and spurious labels, what the paper's numbers are measured on) and\n"
          "against the clips' true labels; whole clip, and max / mean over chunks of the row's training length. 2 s\n"
          "chunk mAP uses the true labels of every 2 s chunk, what pseudo strong labels are for. The budget columns\n"
          "say how much training each row got. The paper's claim to look for: PSL-2s above weak-10s.\n"
          "Results over three seeds and what they show: docs/psl.md.")


if __name__ == "__main__":
    main()
