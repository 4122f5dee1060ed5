"""The GPU check's sections and its report (benchmarks/gpu_check.sh runs this with the machine's Python).

    python -m benchmarks.gpu_check OUTDIR [--dry-run] [--compile] [--budget-s 400]

Each section runs in its own process with its own time limit and records its status: one failing (DALI not
loading, a test failing, a section running out of time) does not stop the others. The report, printed last
and written to OUTDIR/GPU_CHECK.md (at most 10 k characters), has the driver, torch/CUDA/cuDNN/DALI versions,
the libcufft/libcudart loaded, the GPU tests' summary with GPU-vs-CPU feature parity and host syncs per
steady-state step, stream-fed vs in-memory clips/s and stall for full_as (EfficientNet-B2, bf16, no pretrained
weights) and a PSL 2 s step with peak GPU memory, and the loader alone at 15 DALI threads. When DALI does not
load, the fallback section still runs the torch tail on CUDA against the CPU and a PSL step under
torch.cuda.set_sync_debug_mode("error"). Only the standard library is imported here: ``--dry-run`` prints the
plan on any machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORT_LIMIT = 10_000


@dataclass
class Section:
    name: str
    what: str
    cmd: list[str]
    timeout_s: int
    status: str = "not run"
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)  # what the report keeps of its output
    output: str = ""


def sections(py: str, compile_: bool) -> list[Section]:
    variants = ["bf16", "bf16+compile"] if compile_ else ["bf16"]
    return [
        Section("versions", "driver, GPU, torch/CUDA/cuDNN, the DALI build, DALI's GPU front-end on a second of "
                "silence and the libcufft/libcudart then loaded", [py, "-m", "benchmarks.gpu_check", "--versions"], 45),
        Section("gpu tests", "pytest -m gpu (tests/test_gpu.py): GPU-vs-CPU feature parity, recipes' steps, resume, "
                "host syncs per steady-state weak and PSL step, DALI outputs vs a slow consumer",
                [py, "-m", "pytest", "-m", "gpu", "-q", "-s", "-p", "no:cacheprovider", "-o", "timeout=150",
                 "tests/test_gpu.py"], 180),
        Section("train step", "stream-fed vs in-memory clips/s and stall: full_as (EfficientNet-B2) and a PSL 2 s "
                "step, " + ", ".join(variants) + ", 15 DALI threads, no pretrained weights",
                [py, "-m", "benchmarks.train_step", "--device", "cuda", "--variants", *variants, "--clips", "64",
                 "--steps", "16", "--block", "4", "--threads", "15"], 120),
        Section("loader", "the loader alone on the GPU (kaldi_fbank, 15 DALI threads, batch 32, 2 epochs of 64 clips): the "
                "set built, then benchmarks.loader --one ours_gpu kaldi_fbank 15",
                [py, "-c", "from benchmarks.common import dataset; import sys; print(dataset(64))"], 45),
        Section("fallback", "without DALI: the torch tail on CUDA vs the CPU, and a PSL step under "
                "set_sync_debug_mode('error')", [py, "-m", "benchmarks.gpu_check", "--fallback"], 60),
    ]


def _run(s: Section, env: dict[str, str]) -> None:
    start = time.perf_counter()
    try:
        proc = subprocess.run(s.cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=s.timeout_s)
        s.output = proc.stdout + proc.stderr
        s.status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
    except subprocess.TimeoutExpired as e:
        s.output = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        s.status = f"TIMED OUT after {s.timeout_s} s"
    s.seconds = time.perf_counter() - start


def _keep(s: Section) -> None:
    """The lines of a section's output the report shows."""
    out = s.output.splitlines()
    if s.name == "versions":
        s.lines = [line for line in out if line.startswith(("driver", "gpu", "torch", "dali", "front-end", "error"))]
    elif s.name == "gpu tests":
        s.lines = [line.strip() for line in out if re.search(r"GPU vs CPU|CUDA syncs|passed|failed|skipped|error",
                                                              line, re.I) and len(line) < 300][-30:]
    elif s.name == "train step":
        s.lines = [line for line in out if line.startswith(("weak", "psl"))]
    else:
        s.lines = [line for line in out if line.startswith(("loader", "tail", "psl", "skip"))]
    if s.status != "ok":
        s.lines += ["… " + line for line in out[-8:]]


def report(secs: list[Section], commit: str) -> str:
    head = [f"# GPU check, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}", ""]
    head += [f"- {s.name}: **{s.status}** ({s.seconds:.0f} s)" for s in secs] + [""]
    body = []
    for s in secs:
        body += [f"## {s.name}: {s.status}", "", s.what, "", "```", *s.lines, "```", ""]
    text = "\n".join(head + body)
    if len(text) > REPORT_LIMIT:
        text = text[:REPORT_LIMIT - 40] + "\n… (report cut at 10 k characters)\n"
    return text


def versions() -> None:
    """The 'versions' section (in its own process)."""
    smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True)
    print(f"driver, GPU, memory: {smi.stdout.strip() or smi.stderr.strip()}")
    import torch

    from trainer.data.streams import dali_build
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
          f"sees {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'}")
    print(f"dali: {dali_build()}")
    from trainer.data.features import build_frontend
    from trainer.data.settings import FeatureConfig
    from trainer.data.streams import check_gpu_frontend
    try:
        for name in ("mel64", "kaldi_fbank"):
            print(f"front-end {name}: {check_gpu_frontend(build_frontend(FeatureConfig(frontend=name)), torch.device('cuda'))}")
    except Exception as e:  # reported, and the exit status marks the section
        print(f"error: {e}")
        sys.exit(1)


def fallback() -> None:
    """The 'fallback' section: what needs no DALI. The torch tail (features.finish) of a batch of noise on CUDA
    against the CPU, and PSL steps (teacher + student, 2 random chunks per clip) with every synchronizing CUDA
    call an error after the first step."""
    import numpy as np
    import torch

    from trainer.data.chunks import Chunking
    from trainer.data.features import build_frontend
    from trainer.data.settings import FeatureConfig
    from trainer.losses import training_loss
    from trainer.models import build_model
    from trainer.models.settings import ModelConfig
    from trainer.optim import build_optimizer
    from trainer.psl import ChunkedTeacherStudent
    from trainer.settings import OptimConfig

    cuda = torch.device("cuda")
    rng = np.random.default_rng(0)
    for name in ("mel64", "kaldi_fbank"):
        fe = build_frontend(FeatureConfig(frontend=name, clip_seconds=4.0))
        pcm = torch.from_numpy(rng.integers(-3000, 3000, (4, fe.clip_samples), dtype=np.int16))
        # DALI's decode outputs, as the tail takes them: mel64 the samples; kaldi_fbank also each clip's mean, length
        outputs = [pcm] if name == "mel64" else \
            [pcm, pcm.float().mean(1), torch.full((4, 1), fe.clip_samples, dtype=torch.int64)]
        try:
            cpu, gpu = fe.finish(outputs), fe.finish([o.to(cuda) for o in outputs]).cpu()
            d = (cpu - gpu).abs()
            print(f"tail {name} CUDA vs CPU: mean {d.mean():.2e} max {d.max():.2e}")
        except Exception as e:  # the tail's inputs differ by front-end; reported, not fatal
            print(f"tail {name}: not comparable here ({type(e).__name__}: {str(e)[:200]})")
    fe = build_frontend(FeatureConfig(frontend="mel64"))
    model = ModelConfig(name="mobilenetv2", width_mult=0.35)
    student, teacher = (build_model(model, 10, load_pretrained=False).to(cuda) for _ in range(2))
    chunker = ChunkedTeacherStudent(teacher, Chunking.of(fe, 2.0), chunks_per_clip=2)
    opt = build_optimizer(student.parameters(), OptimConfig())
    x, y = torch.randn(8, fe.num_mels, 1001, device=cuda), (torch.rand(8, 10, device=cuda) > 0.8).float()

    def step() -> None:
        loss = training_loss(student, chunker, {"features": x, "labels": y, "keys": [str(i) for i in range(8)]},
                             0.5, lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            step()
        print("psl steps under set_sync_debug_mode('error'): no synchronizing call in 3 steady-state steps")
    finally:
        torch.cuda.set_sync_debug_mode(0)
    print(f"psl peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


def loader_line(py: str, data: str, env: dict[str, str]) -> list[str]:
    proc = subprocess.run([py, "-m", "benchmarks.loader", "--epochs", "2", "--batch", "32", "--one", "ours_gpu",
                           "kaldi_fbank", "15", data], cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    if proc.returncode != 0:
        return [f"loader FAILED: {(proc.stdout + proc.stderr)[-600:]}"]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return [f"loader ours_gpu kaldi_fbank, 15 DALI threads: {r['clips_per_s']:.1f} clips/s over {r['clips']} clips, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", type=Path, metavar="OUTDIR",
                    help="folder for GPU_CHECK.md and the sections' logs")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan (sections, limits, commands) and run nothing")
    ap.add_argument("--compile", action="store_true", help="also a torch.compile variant in the train step")
    ap.add_argument("--python", default=sys.executable,
                    help="the Python the sections run with (default: this one, %(default)s)")
    ap.add_argument("--versions", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fallback", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.versions:
        versions()
        return 0
    if a.fallback:
        fallback()
        return 0
    if a.out is None:
        ap.error("OUTDIR is required")
    py = a.python
    secs = sections(py, a.compile)
    if a.dry_run:
        total = sum(s.timeout_s for s in secs)
        print(f"plan: {len(secs)} sections with {py}, at most {total} s in all, report to {a.out}/GPU_CHECK.md")
        for s in secs:
            print(f"  {s.name} (≤ {s.timeout_s} s): {s.what}\n    $ {' '.join(s.cmd)}")
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, AUDIOTAG_BENCHMARK_RESULTS=str(a.out.resolve()),
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    env.pop("ACCELERATE_USE_CPU", None)
    for s in secs:
        if s.name == "fallback" and secs[0].status == "ok":
            s.status = "skipped (DALI loads: the GPU tests cover the tail and the PSL step)"
            continue
        print(f"== {s.name} (≤ {s.timeout_s} s)", flush=True)
        _run(s, env)
        _keep(s)
        if s.name == "loader" and s.status == "ok":
            s.lines = loader_line(py, s.output.strip().splitlines()[-1], env)
            s.status = "ok" if not s.lines[0].startswith("loader FAILED") else "FAILED"
        (a.out / f"{s.name.replace(' ', '_')}.log").write_text(s.output)
        print(f"== {s.name}: {s.status} ({s.seconds:.0f} s)", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    text = report(secs, commit.stdout.strip() or "?")
    (a.out / "GPU_CHECK.md").write_text(text)
    print(text)
    return 0 if all(s.status == "ok" or s.status.startswith("skipped") for s in secs) else 1


if __name__ == "__main__":
    sys.exit(main())
