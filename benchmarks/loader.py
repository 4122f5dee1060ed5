"""Loader throughput: this DALI pipeline next to the loaders it replaces, on the same clips and cores.

    python -m benchmarks.loader [--clips 192] [--epochs 2] [--batch 32]

Loaders (each run in a fresh subprocess, so peak RSS is its own, DataLoader workers included):
  ours   TrainStream (PSLA sampling, SpecAugment 48/192, feature mixup 0.5), DALI with `threads` threads
  psla   as PSLA runs it: per-file wav read, torchaudio kaldi fbank, in-Dataset waveform mixup at rate
         0.5 (a second wav read), SpecAugment, torch DataLoader with `threads` workers
  wds    webdataset over the same tar shards + torch DataLoader + torchaudio features
  floor  tar read + FLAC decode only (DataLoader with `threads` workers), no features
  ours_gpu  (only where CUDA is available) ours with the stream's device on the GPU
for both front-ends at 1 and 2 threads. "threads" is the DataLoader's worker count, or for ours DALI's
thread count and the torch thread count (which sets the number of tail workers: threads computing the
spectrum, mel and augmentation of one batch each); every loader also has its main thread or process.
All produce the same thing: B × mel × frames normalised features of the same synthetic 10 s clips.
Prints a table and writes benchmarks/results/loader.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import resource
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from benchmarks.common import dataset, run_module, write_result
from trainer.data.datasets import load_records
from trainer.data.features import build_frontend
from trainer.data.shard_bytes import ShardBytes
from trainer.data.settings import AugmentConfig, FeatureConfig, LoaderSettings
from trainer.data.streams import TrainStream

# ours_gpu: the same stream with its device on CUDA (spectrogram and mel in DALI on the GPU), where there is one
LOADERS = ("ours", "psla", "wds", "floor") + (("ours_gpu",) if torch.cuda.is_available() else ())
FRONTENDS = ("kaldi_fbank", "mel64")
THREADS = (1, 2)


def torchaudio_features(wave: torch.Tensor, frontend: str) -> torch.Tensor:
    import torchaudio

    if frontend == "kaldi_fbank":
        fb = torchaudio.compliance.kaldi.fbank(wave[None] - wave.mean(), htk_compat=True, use_energy=False,
                                               window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
        fb = torch.nn.functional.pad(fb, (0, 0, 0, max(0, 1056 - fb.shape[0])))[:1056]
        return ((fb - (-4.6476)) / 4.5699).T
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, win_length=512, hop_length=160, n_mels=64)
    return torchaudio.transforms.AmplitudeToDB(top_db=120)(mel(wave[None]))[0]


def fit(wave: np.ndarray, n: int = 160000) -> torch.Tensor:
    w = torch.from_numpy(wave[:n])
    return torch.nn.functional.pad(w, (0, n - len(w)))


class PslaDataset(torch.utils.data.Dataset):
    """PSLA's AudiosetDataset, reduced to its data path."""

    def __init__(self, wavs: list[str], frontend: str) -> None:
        import torchaudio

        self.wavs, self.frontend = wavs, frontend
        self.freqm = torchaudio.transforms.FrequencyMasking(48)
        self.timem = torchaudio.transforms.TimeMasking(192)

    def __len__(self) -> int:
        return len(self.wavs)

    def __getitem__(self, i: int) -> torch.Tensor:
        wave = fit(sf.read(self.wavs[i], dtype="float32")[0])
        if np.random.random() < 0.5:  # waveform mixup with a random clip
            other = fit(sf.read(self.wavs[np.random.randint(len(self.wavs))], dtype="float32")[0])
            lam = np.random.beta(10, 10)
            wave = lam * wave + (1 - lam) * other
        x = torchaudio_features(wave, self.frontend)
        return self.timem(self.freqm(x[None]))[0]


class ShardFloor(torch.utils.data.Dataset):
    """Tar read + FLAC decode and nothing else."""

    def __init__(self, records: list) -> None:
        self.records = records
        self.read = ShardBytes()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> torch.Tensor:
        return fit(sf.read(io.BytesIO(self.read(self.records[i])), dtype="float32")[0])


def wds_loader(shards: list[str], frontend: str, threads: int, batch: int) -> torch.utils.data.DataLoader:
    import webdataset as wds

    def features(sample: dict) -> torch.Tensor:
        return torchaudio_features(fit(sf.read(io.BytesIO(sample["flac"]), dtype="float32")[0]), frontend)

    ds = wds.WebDataset(shards, shardshuffle=False, empty_check=False).map(features)
    return torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=threads)


def our_stream(data: Path, frontend: str, threads: int, batch: int, scale: int = 1,
               device: str = "cpu", rank: int = 0, world: int = 1) -> TrainStream:
    """Our TrainStream as the benchmarks use it; ``scale`` replicates the records (new keys, same bytes)."""
    records = load_records(str(data / "shards"))[0]
    records = [dataclasses.replace(r, key=f"{r.key}-{k}") for k in range(scale) for r in records]
    aug = AugmentConfig(freqm=48, timem=192, mixup=0.5)
    return TrainStream(records, 10, LoaderSettings(batch, threads, prefetch=2), build_frontend(FeatureConfig(frontend)),
                       aug, 0, rank, world, torch.device(device))


def run_one(loader: str, frontend: str, threads: int, data: Path, epochs: int, batch: int) -> dict:
    """One configuration in this process: clips/s over ``epochs`` passes (after one warm-up batch)."""
    torch.set_num_threads(threads)
    records = load_records(str(data / "shards"))[0]
    if loader in ("ours", "ours_gpu"):
        stream = our_stream(data, frontend, threads, batch, device="cuda" if loader == "ours_gpu" else "cpu")

        def epoch(e: int):
            stream.set_epoch(e)
            return (b["features"] for b in stream)
    else:
        if loader == "psla":
            ds = PslaDataset(sorted(str(p) for p in (data / "wav").glob("*.wav")), frontend)
        elif loader == "floor":
            ds = ShardFloor(records)
        dl = wds_loader(sorted({r.shard for r in records}), frontend, threads, batch) if loader == "wds" else \
            torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=threads,
                                        persistent_workers=True)

        def epoch(e: int):
            return iter(dl)
    it = epoch(0)
    next(it)  # warm-up: pipeline build, worker start
    clips, start = 0, time.perf_counter()
    for x in it:
        clips += x.shape[0]
    for e in range(1, epochs):
        for x in epoch(e):
            clips += x.shape[0]
    if loader == "ours_gpu":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"loader": loader, "frontend": frontend, "threads": threads, "clips": clips, "n": len(records),
            "clips_per_s": clips / elapsed, "peak_rss_mb": rss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=192, help="10 s synthetic clips (default: %(default)s)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per loader and round (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=32, help="clips per batch (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="interleaved rounds; the table takes each one's best (default: %(default)s)")
    ap.add_argument("--one", nargs=4, metavar=("LOADER", "FRONTEND", "THREADS", "DATA"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        loader, frontend, threads, data = args.one
        print(json.dumps(run_one(loader, frontend, int(threads), Path(data), args.epochs, args.batch)))
        return
    data = dataset(args.clips)
    runs = []
    for _ in range(args.repeats):
        for frontend in FRONTENDS:
            for threads in THREADS:
                for loader in LOADERS:  # interleaved, so a noisy neighbour hits every loader alike
                    out = run_module("loader", "--epochs", str(args.epochs), "--batch", str(args.batch), "--one",
                                     loader, frontend, str(threads), str(data), capture_output=True, text=True,
                                     check=True)
                    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(f"{frontend:12s} threads={threads} {loader:6s} {runs[-1]['clips_per_s']:8.1f} clips/s "
                          f"peak RSS {runs[-1]['peak_rss_mb']:7.0f} MB", flush=True)
    results = [max((r for r in runs if (r["loader"], r["frontend"], r["threads"]) == key),
                   key=lambda r: r["clips_per_s"]) for key in dict.fromkeys((r["loader"], r["frontend"], r["threads"])
                                                                             for r in runs)]
    gpu = "ours_gpu" in LOADERS
    print("\nfrontend     thr   ours    psla     wds   floor   ours/psla ours/wds" + ("  ours_gpu" if gpu else "")
          + "   (best of each)")
    for frontend in FRONTENDS:
        for threads in THREADS:
            r = {x["loader"]: x["clips_per_s"] for x in results if (x["frontend"], x["threads"]) == (frontend, threads)}
            print(f"{frontend:12s} {threads:3d} {r['ours']:6.1f} {r['psla']:7.1f} {r['wds']:7.1f} {r['floor']:7.1f}"
                  f" {r['ours'] / r['psla']:9.2f}x {r['ours'] / r['wds']:7.2f}x" + (f" {r['ours_gpu']:9.1f}" if gpu else ""))
    write_result("loader", {"clips": args.clips, "epochs": args.epochs, "batch_size": args.batch,
                            "repeats": args.repeats, "results": results, "all_runs": runs})


if __name__ == "__main__":
    main()
