"""Build FLAC webdataset shards from an AudioSet CSV, a PSLA JSON datafile or a PSL TSV.

    python -m tools.build_shards SOURCE --out shards/NAME [options]

See shards/README.md for the output format. Output is deterministic (same inputs and options give
byte-identical shards whatever --workers is) and resumable: finished shards are kept after a kill,
and the interrupted one is rebuilt. One build at a time writes an output directory (each ``--part`` holds its own
OS lock); a worker process that dies stops the build, naming it and its input. ``--out`` may be a URL
(``s3://bucket/prefix/NAME``, ``gs://…``): the dataset is built in ``--stage`` (resumable there), each shard
and its index uploaded in the background as soon as they are finished, and the rest at the end, the manifest
last (:func:`trainer.data.remote.publish`, which also sends what a killed build had not; credentials from the
environment).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import multiprocessing
import multiprocessing.connection
import os
import random
import re
import signal
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from tqdm import tqdm

from tools import audioset
from tools.audio_io import SAMPLE_RATE, AudioError, encode_flac, load_audio, to_pcm16
from tools.shard_writer import ShardWriter
from tools.sources import LOW_RATE, TOO_LONG, TOO_SHORT, UNREADABLE, Item, mark_duplicates, read_source
from trainer.data.atomic import atomic_write
from trainer.data.audio import AudioTooLong, SampleRateTooLow
from trainer.data.locks import LockHeld, hold_lock
from trainer.data.remote import RemoteError, Stores, cache_root, is_url, publish
from trainer.data.settings import RemoteSettings
from trainer.data.manifest import (DATASET_INFO, MANIFEST, REJECTS, VOCABULARY, WEIGHTS, Vocabulary, write_manifest,
                                   write_manifest_cache, write_weights)
from trainer.data.records import RecordTable, ShardRecord

BUILDER_VERSION = "1"
STATE_DIR = ".build"  # per-shard resume state inside the output directory
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


@dataclass
class BuildOptions:
    source: Path
    out: Path
    labels: Path | None = None  # None: AudioSet's 527 classes, shipped in tools/audioset
    audio_dir: Path | None = None
    workers: int = 1
    shard_size: int = 256 * 10**6
    shard_samples: int | None = None  # when set, replaces the byte limit
    min_duration: float = 0.1
    max_duration: float = 60.0  # AudioSet clips are 10 s; this bounds a worker's memory (and a lying header's)
    max_reject_fraction: float = 0.05
    shuffle: bool = False
    seed: int = 0
    part: int = 0
    num_parts: int = 1
    weight_offset: float = 0.01


@dataclass
class BuildResult:
    num_inputs: int
    num_written: int
    rejects: dict[str, int]
    out: Path

    @property
    def num_rejected(self) -> int:
        return sum(self.rejects.values())

    def summary(self) -> str:
        s = f"{self.num_inputs} inputs, {self.num_written} written, {self.num_rejected} rejected"
        if self.rejects:
            s += " (" + ", ".join(f"{r}: {n}" for r, n in sorted(self.rejects.items())) + ")"
        return s


def parse_size(text: str) -> int:
    """'256MB' -> 256_000_000; KB/MB/GB are decimal, KiB/MiB/GiB binary."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: use e.g. 256MB, 1GiB or a byte count")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def class_counts(label_sets: Iterable[Sequence[int]], num_classes: int) -> list[int]:
    """How many clips carry each class."""
    counts = [0] * num_classes
    for labels in label_sets:
        for c in labels:
            counts[c] += 1
    return counts


def psla_weights(label_sets: Sequence[Sequence[int]], num_classes: int, offset: float = 0.01) -> list[float]:
    """PSLA balanced-sampling weights: per clip, the sum over its labels of 1000 / (count(label) + offset)."""
    counts = class_counts(label_sets, num_classes)
    return [sum(1000.0 / (counts[c] + offset) for c in labels) for labels in label_sets]


def write_labels(out: Path, vocab: Vocabulary, records: Sequence[ShardRecord], weight_offset: float
                 ) -> list[ShardRecord]:
    """What every dataset directory says about its labels: the manifest with PSLA weights computed from the
    records' labels, weights.csv and the vocabulary. Returns the records with those weights."""
    weights = psla_weights([r.labels for r in records], len(vocab), weight_offset)
    records = [replace(r, weight=w) for r, w in zip(records, weights)]
    write_manifest(out / MANIFEST, records)
    write_weights(out / WEIGHTS, weights)
    write_manifest_cache(out, RecordTable.from_records(records))  # after both files: it records their mtimes
    vocab.save(out / VOCABULARY)
    return records


def load_vocabulary(path: Path | None) -> Vocabulary:
    """``path``, or AudioSet's 527-class vocabulary shipped with the project when None."""
    if path is None:
        return audioset.vocabulary()
    if not Path(path).is_file():
        raise FileNotFoundError(f"--labels {path}: no such file (expected a class_labels_indices.csv)")
    return Vocabulary.load(path)


class WorkerDied(RuntimeError):
    """A worker process ended without answering (a signal, the OOM killer); the message names it and its input."""


def _encode(job: tuple[str, float, float] | None) -> tuple[bytes | None, float, str | None, str]:
    """Worker: decode, resample, quantise and FLAC-encode one file. Returns (flac, seconds, reject, detail)."""
    if job is None:
        return None, 0.0, None, ""
    path, min_duration, max_duration = job
    try:
        pcm = to_pcm16(load_audio(path, max_seconds=max_duration))
    except AudioTooLong as e:
        return None, 0.0, TOO_LONG, str(e)
    except SampleRateTooLow as e:
        return None, 0.0, LOW_RATE, str(e)
    except (AudioError, OSError) as e:
        return None, 0.0, UNREADABLE, str(e)
    duration = len(pcm) / SAMPLE_RATE
    if duration < min_duration:
        return None, duration, TOO_SHORT, f"{duration:.3f} s < {min_duration} s"
    return encode_flac(pcm), duration, None, ""


def _prefix(opts: BuildOptions) -> str:
    name = opts.out.name
    return name if opts.num_parts == 1 else f"{name}-p{opts.part}"


def _fingerprint(opts: BuildOptions, vocab: Vocabulary, items: Sequence[Item]) -> str:
    """Everything that determines shard contents; a resume with a different fingerprint is refused."""
    h = hashlib.sha256()
    h.update(json.dumps([BUILDER_VERSION, vocab.digest(), opts.shard_size, opts.shard_samples, opts.min_duration,
                         opts.max_duration, opts.shuffle, opts.seed, opts.part, opts.num_parts]).encode())
    for it in items:
        h.update(json.dumps([it.key, it.source, it.labels, it.reject]).encode())
    return h.hexdigest()[:16]


def _reject_row(it: Item, reason: str, detail: str) -> dict:
    return {"key": it.key, "source": it.source, "reason": reason, "detail": detail}


def _resume(opts: BuildOptions, fingerprint: str) -> tuple[int, int, list[ShardRecord], list[dict]]:
    """Load finished shards of this prefix in order; delete anything after the first unfinished one."""
    prefix, state_dir = _prefix(opts), opts.out / STATE_DIR
    shard, start, records, rejects = 0, 0, [], []
    while True:
        name = f"{prefix}-{shard:06d}"
        tar, idx, state = opts.out / f"{name}.tar", opts.out / f"{name}.idx", state_dir / f"{name}.json"
        if not (tar.is_file() and idx.is_file() and state.is_file()):
            break
        st = json.loads(state.read_text())
        if st["fingerprint"] != fingerprint:
            raise SystemExit(f"{opts.out}: {tar.name} was built from other inputs or options; "
                             "use a new --out directory or delete this one")
        records += [ShardRecord.from_json(json.dumps(r)) for r in st["records"]]
        rejects += st["rejects"]
        start, shard = st["consumed"], shard + 1
    # finished files, or temp_path names (private: .NAME.PID-RANDOM.tmp) of a build that died; this process holds
    # the prefix's lock, so none is being written
    stale = re.compile(rf"\.?{re.escape(prefix)}-(\d{{6}})\.(tar|idx|json)(\.\d+-[0-9a-f]+)?(\.tmp)?")
    for d in (opts.out, state_dir):
        for p in d.iterdir() if d.is_dir() else ():
            m = stale.fullmatch(p.name)
            if m and int(m.group(1)) >= shard:
                p.unlink()
    return shard, start, records, rejects


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, private=True) as f:  # parts finishing together may write the same file
        f.write(text)


def _worker(conn: multiprocessing.connection.Connection) -> None:
    """A worker process: encode each job received until None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops the workers
    try:
        while (job := conn.recv()) is not None:
            conn.send(_encode(job))
    except EOFError:  # the parent is gone
        pass


def _results(jobs: list, workers: int) -> Iterator[tuple]:
    """``_encode`` of each job, in input order (output is deterministic), on ``workers`` processes.

    Each worker has one job at a time over its own pipe, so when one dies (multiprocessing.Pool waits forever
    for it; concurrent.futures cannot say which input it had) the build stops with :class:`WorkerDied`. Jobs are
    handed out at most ``4 * workers`` ahead of the one to yield next, which bounds the results held."""
    if workers <= 1:
        yield from map(_encode, jobs)
        return
    # forkserver, not fork: the caller (a test session, a trainer) may already run CUDA or DALI threads
    ctx = multiprocessing.get_context("forkserver")
    procs: list[tuple[multiprocessing.process.BaseProcess, multiprocessing.connection.Connection]] = []
    try:
        for w in range(workers):
            conn, child = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(child,), name=f"build_shards worker {w}", daemon=True)
            p.start()
            child.close()
            procs.append((p, conn))
        order = [pos for pos, job in enumerate(jobs) if job is not None]
        k = 0  # order[k] is the next job to hand out
        busy: dict[int, int] = {}  # worker -> position of the job it has
        idle = list(range(workers))
        done: dict[int, tuple] = {}

        def hand_out(w: int, pos: int) -> None:
            """Give worker ``w`` the next job if it is close enough to ``pos``, else make it idle."""
            nonlocal k
            if k == len(order) or order[k] >= pos + 4 * workers:
                idle.append(w)
                return
            busy[w], k = order[k], k + 1
            try:
                procs[w][1].send(jobs[busy[w]])
            except OSError:  # a dead worker: its sentinel says so at the next wait
                pass

        for pos, job in enumerate(jobs):
            if job is None:
                yield _encode(None)
                continue
            for w in [idle.pop() for _ in range(len(idle))]:
                hand_out(w, pos)
            while pos not in done:
                ready = multiprocessing.connection.wait([procs[w][1] for w in busy] + [procs[w][0].sentinel
                                                                                      for w in busy])
                for w in [w for w in busy if procs[w][1] in ready or procs[w][0].sentinel in ready]:
                    p, conn = procs[w]
                    try:
                        result = conn.recv()
                    except EOFError:  # the worker is gone: its pipe closed with the process
                        p.join(5)
                        code = p.exitcode
                        how = f"exit code {code}" if code is None or code >= 0 else \
                            f"signal {signal.Signals(-code).name}" + \
                            ("; what the OOM killer sends" if code == -signal.SIGKILL else "")
                        raise WorkerDied(
                            f"worker {w} (pid {p.pid}) died ({how}) while "
                            f"encoding {jobs[busy[w]][0]}; finished shards are kept: run the same command again "
                            "to resume") from None
                    done[busy.pop(w)] = result
                    hand_out(w, pos)
            yield done.pop(pos)
    finally:
        for p, conn in procs:
            if p.is_alive():
                p.kill()
            p.join(5)
            conn.close()


def build(opts: BuildOptions, progress: bool = True,
          finished: Callable[[Path, Path], None] | None = None) -> BuildResult:
    """Build (or resume building) the shards of ``opts.source`` into ``opts.out``, holding the lock of
    ``opts.out`` (of its part) for the build's life; raises :class:`LockHeld` when another process holds it.
    ``finished(tar, idx)`` is called with each shard built now (not those resumed) once both files are
    complete."""
    if not 0 <= opts.part < opts.num_parts:
        raise ValueError(f"--part {opts.part} must be in [0, --num-parts {opts.num_parts})")
    vocab = load_vocabulary(opts.labels)
    items = mark_duplicates(read_source(Path(opts.source), vocab, opts.audio_dir))
    if opts.shuffle:
        random.Random(opts.seed).shuffle(items)
    items = items[opts.part :: opts.num_parts]
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / STATE_DIR).mkdir(exist_ok=True)
    what = f"the build of {opts.out}" + (f" part {opts.part}" if opts.num_parts > 1 else "")
    with hold_lock(opts.out / STATE_DIR / f"{_prefix(opts)}.lock", what):
        return _build(opts, vocab, items, progress, finished)


def _build(opts: BuildOptions, vocab: Vocabulary, items: list[Item], progress: bool,
           finished: Callable[[Path, Path], None] | None) -> BuildResult:
    fingerprint = _fingerprint(opts, vocab, items)
    shard, start, records, rejects = _resume(opts, fingerprint)
    prefix = _prefix(opts)

    writer: ShardWriter | None = None
    shard_records: list[ShardRecord] = []
    shard_rejects: list[dict] = []

    def close(consumed: int) -> None:
        nonlocal writer, shard, shard_records, shard_rejects
        state = {"fingerprint": fingerprint, "consumed": consumed,
                 "records": [json.loads(r.to_json()) for r in shard_records], "rejects": shard_rejects}
        # State before the tar: an existing tar then always has its state and index.
        _write_text(opts.out / STATE_DIR / f"{writer.tar_path.stem}.json", json.dumps(state))
        writer.close()
        if finished is not None:
            finished(writer.tar_path, writer.idx_path)
        records.extend(shard_records)
        rejects.extend(shard_rejects)
        writer, shard, shard_records, shard_rejects = None, shard + 1, [], []

    jobs = [(it.path, opts.min_duration, opts.max_duration) if it.reject is None else None for it in items[start:]]
    bar = tqdm(total=len(items), initial=start, unit="clip", disable=not progress, desc=prefix)
    try:
        for pos, (it, (flac, duration, reason, detail)) in enumerate(zip(items[start:], _results(jobs, opts.workers)),
                                                                     start):
            bar.update()
            if it.reject or reason:
                shard_rejects.append(_reject_row(it, it.reject or reason, it.detail if it.reject else detail))
                continue
            meta = json.dumps({"key": it.key, "labels": list(it.labels), "mids": list(it.mids),
                               "duration": duration, "source": it.source}, sort_keys=True).encode()
            need = 1024 + -(-len(flac) // 512) * 512 + -(-len(meta) // 512) * 512
            if writer is not None and (len(shard_records) >= opts.shard_samples if opts.shard_samples
                                       else writer.size + need > opts.shard_size):
                close(pos)
            if writer is None:
                writer = ShardWriter(opts.out / f"{prefix}-{shard:06d}.tar")
            where = writer.add(it.key, {"flac": flac, "json": meta})["flac"]
            shard_records.append(ShardRecord(it.key, writer.tar_path.name, where.offset, where.size, it.labels,
                                             duration))
        if writer is not None:
            close(len(items))
        else:
            rejects.extend(shard_rejects)  # trailing rejects with no shard of their own
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()

    counts = collections.Counter(r["reason"] for r in rejects)
    result = BuildResult(len(items), len(records), dict(counts), opts.out)
    if opts.num_parts == 1:
        _finalize(opts, vocab, records, rejects)
    else:
        _write_part(opts, records, rejects)
    return result


def _options_json(opts: BuildOptions) -> dict:
    d = asdict(opts)
    for k in ("workers", "part", "out"):  # they do not change the dataset
        d.pop(k)
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}


def _finalize(opts: BuildOptions, vocab: Vocabulary, records: list[ShardRecord], rejects: list[dict]) -> None:
    """Write manifest, weights, vocabulary copy, rejects and dataset.json for the whole dataset."""
    out = opts.out
    records = write_labels(out, vocab, records, opts.weight_offset)
    _write_text(out / REJECTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects))
    info = {
        "name": out.name,
        "builder_version": BUILDER_VERSION,
        "num_inputs": len(records) + len(rejects),
        "num_written": len(records),
        "num_rejected": len(rejects),
        "rejects": dict(sorted(collections.Counter(r["reason"] for r in rejects).items())),
        "num_shards": len({r.shard for r in records}),
        "num_classes": len(vocab),
        "class_counts": class_counts((r.labels for r in records), len(vocab)),
        "total_hours": sum(r.duration for r in records) / 3600.0,
        "sample_rate": SAMPLE_RATE,
        "audio": "flac pcm16 mono",
        "vocabulary_digest": vocab.digest(),
        "weight_offset": opts.weight_offset,
        "options": _options_json(opts),
    }
    _write_text(out / DATASET_INFO, json.dumps(info, indent=1) + "\n")


def _write_part(opts: BuildOptions, records: list[ShardRecord], rejects: list[dict]) -> None:
    """Write this part's manifest and rejects; the part that finds all parts present merges them."""
    out = opts.out
    tag = f"p{opts.part}-of-{opts.num_parts}"
    write_manifest(out / f"manifest.{tag}.jsonl", records)
    _write_text(out / f"rejects.{tag}.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rejects))
    parts = [(out / f"manifest.p{i}-of-{opts.num_parts}.jsonl", out / f"rejects.p{i}-of-{opts.num_parts}.jsonl")
             for i in range(opts.num_parts)]
    if all(m.is_file() and r.is_file() for m, r in parts):
        all_records, all_rejects = [], []
        for m, r in parts:
            all_records += [ShardRecord.from_json(line) for line in m.read_text().splitlines() if line]
            all_rejects += [json.loads(line) for line in r.read_text().splitlines() if line]
        _finalize(opts, load_vocabulary(opts.labels), all_records, all_rejects)


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.build_shards", description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="AudioSet segments .csv (with --audio-dir), PSLA .json or PSL .tsv")
    p.add_argument("--out", required=True, help="output directory shards/NAME, or a URL s3://bucket/prefix/NAME")
    p.add_argument("--stage", type=Path, help="with a URL --out: the local directory the dataset is built in "
                                               "first (default: under ~/.cache/audiotag/build)")
    p.add_argument("--audio-dir", type=Path, help="where the clips of an AudioSet CSV (or a PSL TSV) are")
    p.add_argument("--labels", type=Path,
                   help="class_labels_indices.csv (default: AudioSet's 527 classes, shipped in tools/audioset)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes decoding and encoding clips; the shards are the same for any number "
                        "(default: %(default)s, this machine's cores)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--shard-size", type=parse_size, default=parse_size("256MB"), metavar="SIZE",
                      help="bytes per shard: B, KB/MB/GB (powers of 1000) or KiB/MiB/GiB (default: 256MB)")
    size.add_argument("--shard-samples", type=int, help="clips per shard (instead of --shard-size)")
    p.add_argument("--min-duration", type=float, default=0.1,
                   help="seconds; shorter clips are rejected (default: %(default)s s)")
    p.add_argument("--max-duration", type=float, default=60.0,
                   help="seconds; longer clips are rejected before they are decoded past this length "
                        "(default: %(default)s s)")
    p.add_argument("--max-reject-fraction", type=float, default=0.05,
                   help="fraction of the inputs (0–1) that may be rejected; above it the build "
                        "exits non-zero (default: %(default)s)")
    p.add_argument("--shuffle", action="store_true", help="shuffle the inputs (with --seed) before sharding")
    p.add_argument("--seed", type=int, default=0, help="seed of --shuffle (default: %(default)s)")
    p.add_argument("--part", type=int, default=0, metavar="I",
                   help="build only slice I of --num-parts (inputs I, I+N, ...; default: %(default)s)")
    p.add_argument("--num-parts", type=int, default=1, metavar="N",
                   help="slices N of the inputs, one build each, e.g. a Slurm array's tasks (default: %(default)s)")
    p.add_argument("--weight-offset", type=float, default=0.01,
                   help="PSLA sample weight 1000 / (class count + offset); PaSST: 100 "
                        "(default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    url = a.out.rstrip("/") if is_url(a.out) else None
    out = Path(a.out) if url is None else \
        (a.stage or cache_root(RemoteSettings()) / "build" / hashlib.sha256(url.encode()).hexdigest()[:16]) \
        / url.rsplit("/", 1)[-1]
    if out.name in ("", ".", ".."):
        p.error("--out must name the dataset directory, e.g. shards/NAME")
    if not 0 <= a.min_duration < a.max_duration:
        p.error(f"need 0 <= --min-duration < --max-duration, got {a.min_duration} and {a.max_duration}")
    if url is not None and a.num_parts > 1:
        p.error("--num-parts with a URL --out: not supported yet; build the parts locally, then upload")
    opts = BuildOptions(source=a.source, out=out, labels=a.labels, audio_dir=a.audio_dir, workers=a.workers,
                        shard_size=a.shard_size, shard_samples=a.shard_samples, min_duration=a.min_duration,
                        max_duration=a.max_duration,
                        max_reject_fraction=a.max_reject_fraction, shuffle=a.shuffle, seed=a.seed, part=a.part,
                        num_parts=a.num_parts, weight_offset=a.weight_offset)
    stores = Stores(RemoteSettings())
    uploads: list[Future] = []
    with ThreadPoolExecutor(1, thread_name_prefix="upload") as pool:

        def upload(*paths: Path) -> None:  # a finished shard and its index, sent while the next one is built
            uploads.extend(pool.submit(stores.upload, p, f"{url}/{p.name}") for p in paths)

        try:
            result = build(opts, progress=not a.no_progress, finished=upload if url is not None else None)
        except (FileNotFoundError, ValueError, LockHeld) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except WorkerDied as e:
            print(f"error: {e}", file=sys.stderr)
            return 3
    print(result.summary())
    if result.num_inputs and result.num_rejected / result.num_inputs > opts.max_reject_fraction:
        print(f"error: {result.num_rejected / result.num_inputs:.1%} of inputs rejected, above "
              f"--max-reject-fraction {opts.max_reject_fraction}; see {opts.out / REJECTS}", file=sys.stderr)
        return 1
    if url is not None:
        try:
            for job in uploads:
                job.result()
            sent = publish(opts.out, url, stores)  # what the build did not send (resumed shards), manifest last
        except RemoteError as e:  # the build stays in --stage: run again to resume the upload
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"uploaded {len(uploads) + len(sent)} files to {url} (built in {opts.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
