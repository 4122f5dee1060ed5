"""Datasets at URLs: ``http(s)://host/path``, ``s3://bucket/prefix`` or ``gs://bucket/prefix`` holding what
tools.build_shards writes, read where they are instead of copied first.

The small files (manifest, weights, vocabulary, dataset.json, enhancement.csv) are fetched once per node into
a local cache (:func:`fetch_dataset`) and reused while the remote's size, ETag and modification time stay the
same; the loader then reads them as it reads a local dataset's. Clips are read by byte range
(:class:`RemoteBytes`): the stream's read-ahead asks for them ``data.readahead`` batches before DALI takes
them, adjacent ranges become one request, at most ``data.remote.connections`` requests are in flight, and a
request that times out, gets a 5xx or loses its connection is tried again with backoff. A clip that still
cannot be read raises :class:`RemoteError` naming its URL, which the stream treats as a corrupt clip.

The client is obstore (benchmarks/NOTES.md, "Remote datasets", says why). Credentials come from its standard
environment chains (``AWS_*``, ``GOOGLE_*``) only: a URL holding them is refused, so they never reach a log
or a saved config.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import threading
import time
import warnings
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import urlsplit

import numpy as np
from braceexpand import braceexpand

from trainer.data.atomic import atomic_write
from trainer.data.manifest import DATASET_INFO, ENHANCEMENT, MANIFEST, VOCABULARY, WEIGHTS
from trainer.data.settings import RemoteSettings
from trainer.data.shard_bytes import ShardBytes

SCHEMES = ("http", "https", "s3", "gs")
SMALL_FILES = {MANIFEST: True, VOCABULARY: True, WEIGHTS: False, DATASET_INFO: False, ENHANCEMENT: False}  # required?
COALESCE_GAP = 64 << 10  # members this close in one shard are read in one request (tar headers lie between)
COALESCE_MAX = 8 << 20  # ... up to this many bytes a request
AHEAD_BYTES = 256 << 20  # read-ahead held per reader at most; the oldest is dropped past it (a replanned stream)
BACKOFF, BACKOFF_MAX = 0.1, 5.0  # seconds before the first retry, doubling up to the cap, with jitter

T = TypeVar("T")


class RemoteError(RuntimeError):
    """A remote read that failed for good (after its retries), naming the URL."""


class RemoteNotFound(RemoteError, FileNotFoundError):
    """A dataset file or shard that is not at its URL."""


def is_url(spec: str | os.PathLike) -> bool:
    return isinstance(spec, str) and urlsplit(spec).scheme in SCHEMES


def locate(base: str, name: str) -> str:
    """Where a manifest's shard ``name`` is: ``name`` itself when it is a URL (tools.enhance_labels of a dataset
    at a URL names its shards so), else ``base/name`` (``base``: the dataset's directory or URL)."""
    return name if is_url(name) else f"{base}/{name}"


def _parts(url: str) -> tuple[str, str]:
    """(``scheme://host``, path inside it) of ``url``; a URL with credentials in it is refused without echoing
    them."""
    p = urlsplit(url)
    if p.username is not None or p.password is not None:
        raise ValueError(f"{p.scheme}://…@{p.hostname}{p.path}: a dataset URL may not hold credentials; give them "
                         "through the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                         "GOOGLE_APPLICATION_CREDENTIALS, …)")
    if not p.netloc:
        raise ValueError(f"{url}: no host or bucket")
    return f"{p.scheme}://{p.netloc}", p.path.strip("/")


def split_spec(spec: str) -> tuple[str, set[str] | None]:
    """(dataset URL, selected shard names or None for all) of a URL spec: a dataset, one ``x.tar`` or a brace
    pattern of shards inside one dataset (as for a local directory)."""
    if "{" not in spec and not spec.endswith(".tar"):
        _parts(spec)
        return spec.rstrip("/"), None
    urls = list(braceexpand(spec))
    bases = {u.rsplit("/", 1)[0] for u in urls}
    if len(bases) != 1:
        raise ValueError(f"{spec}: a shard pattern must stay inside one dataset")
    base = bases.pop()
    _parts(base)
    return base, {u.rsplit("/", 1)[1] for u in urls}


def _first_line(e: BaseException) -> str:
    """An obstore error's summary (its message goes on with a debug dump of the request)."""
    text = str(e).strip().split("\n", 1)[0]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _fatal(e: BaseException) -> bool:
    """Errors no retry mends: a missing object, refused credentials, a bad argument, another 4xx status (a range
    past the end of the object: 416) except timeouts (408) and throttling (429)."""
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    if isinstance(e, (FileNotFoundError, PermissionDeniedError, UnauthenticatedError, ValueError, TypeError)):
        return True
    status = re.search(r"status(?: code)?:? (\d{3})", str(e))
    return status is not None and status[1].startswith("4") and status[1] not in ("408", "429")


class Stores:
    """One obstore store per ``scheme://host`` (its connection pool), made on first use."""

    def __init__(self, settings: RemoteSettings) -> None:
        self.settings = settings
        self._stores: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.requests = 0  # requests sent, retries included

    def get(self, url: str) -> tuple[Any, str]:
        """(store, path in it) for ``url``."""
        root, path = _parts(url)
        with self._lock:
            store = self._stores.get(root)
            if store is None:
                from obstore.store import from_url

                # retries are ours (:meth:`call`): obstore's do not cover a body cut short
                store = self._stores[root] = from_url(root, client_options={
                    "allow_http": True, "timeout": f"{self.settings.timeout}s",
                    "connect_timeout": f"{min(self.settings.timeout, 10.0)}s"}, retry_config={"max_retries": 0})
        return store, path

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, tried again with backoff after a failure that a retry may mend; a RemoteError naming
        ``what`` (a URL) when the tries are spent."""
        for attempt in range(self.settings.retries + 1):
            with self._lock:
                self.requests += 1
            try:
                return fn()
            except Exception as e:  # obstore raises its own types, OSError and others
                if _fatal(e):
                    raise RemoteError(f"{what}: {_first_line(e)}") from e
                if attempt == self.settings.retries:
                    raise RemoteError(f"{what}: {_first_line(e)} (tried {attempt + 1} times)") from e
            time.sleep(min(BACKOFF_MAX, BACKOFF * 2 ** attempt) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def head(self, url: str) -> dict:
        import obstore

        store, path = self.get(url)
        return self.call(url, lambda: obstore.head(store, path))

    def read(self, url: str, start: int | None = None, length: int | None = None) -> Any:
        """The object's bytes (all, or ``length`` from ``start``) as a buffer; short reads are errors."""
        import obstore

        store, path = self.get(url)
        if start is None:
            return self.call(url, lambda: obstore.get(store, path).bytes())
        data = self.call(f"{url} bytes {start}-{start + length - 1}",
                         lambda: obstore.get_range(store, path, start=start, length=length))
        if len(data) != length:
            raise RemoteError(f"{url}: {length} bytes at {start} asked, {len(data)} came; is the manifest from "
                              "another build?")
        return data

    def upload(self, src: Path, url: str) -> None:
        """The file ``src`` to ``url`` (multipart for a large one); an object appears whole or not at all."""
        import obstore

        store, path = self.get(url)
        self.call(url, lambda: obstore.put(store, path, src))

    def download(self, url: str, dest: Path) -> None:
        """The whole object into ``dest``, written in chunks and published complete (atomically)."""
        import obstore

        store, path = self.get(url)

        def once() -> None:
            with atomic_write(dest, "wb", private=True) as f:
                for chunk in obstore.get(store, path).stream(min_chunk_size=8 << 20):
                    f.write(memoryview(chunk))

        self.call(url, once)


def cache_root(settings: RemoteSettings) -> Path:
    """The node's cache directory: ``cache_dir``, or ``$XDG_CACHE_HOME/audiotag`` (``~/.cache/audiotag``)."""
    return Path(settings.cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "audiotag")


def fetch_dataset(url: str, stores: Stores) -> Path:
    """A local directory holding the small files of the dataset at ``url``: fetched into ``cache_dir/datasets``
    (one folder per dataset URL) unless the copies there match the remote's size, ETag and modification time.
    The processes of a node take turns (a file lock), so one fetches and the others reuse. A dataset that cannot
    be reached is one RemoteError naming the URL."""
    local = cache_root(stores.settings) / "datasets" / hashlib.sha256(url.encode()).hexdigest()[:16]
    local.mkdir(parents=True, exist_ok=True)
    with open(local / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (local / "url").write_text(url + "\n")
        seen_path = local / ".remote.json"
        try:
            seen = json.loads(seen_path.read_text())
        except (OSError, ValueError):
            seen = {}
        for name, required in SMALL_FILES.items():
            try:
                meta = stores.head(f"{url}/{name}")
            except RemoteError as e:
                if not isinstance(e.__cause__, FileNotFoundError):
                    raise RemoteError(f"{url}: cannot read the dataset ({e})") from None
                if required:
                    raise RemoteNotFound(f"{url}/{name}: not found; is {url} a dataset built by "
                                         "tools.build_shards?") from None
                (local / name).unlink(missing_ok=True)  # gone remotely: a stale copy must not be used
                seen.pop(name, None)
                continue
            stamp = [meta["size"], meta.get("e_tag"), meta["last_modified"].isoformat()]
            if seen.get(name) == stamp and (local / name).is_file() and (local / name).stat().st_size == meta["size"]:
                continue
            data = stores.read(f"{url}/{name}")
            if len(data) != meta["size"]:
                raise RemoteError(f"{url}/{name}: {len(data)} bytes came, {meta['size']} expected "
                                  "(changed while read?)")
            with atomic_write(local / name, "wb", private=True) as f:
                f.write(memoryview(data))
            seen[name] = stamp
        with atomic_write(seen_path, private=True) as f:
            json.dump(seen, f)
    return local


def publish(local: Path, url: str, stores: Stores) -> list[str]:
    """Upload the dataset directory ``local`` (what tools.build_shards wrote) to ``url``: the shards and their
    indexes first, then the other files, ``manifest.jsonl`` last, so that a reader finds no manifest before
    everything it names is there. A file already at the URL with the same size is skipped, so a publish
    stopped by a kill resumes. Returns the names uploaded."""
    files = sorted(p for p in local.iterdir() if p.is_file() and not p.name.startswith("."))
    order = sorted(files, key=lambda p: (p.name == MANIFEST, p.suffix not in (".tar", ".idx"), p.name))
    sent = []
    for path in order:
        target = f"{url}/{path.name}"
        try:
            if path.name != MANIFEST and stores.head(target)["size"] == path.stat().st_size:
                continue
        except RemoteError as e:
            if not isinstance(e.__cause__, FileNotFoundError):
                raise
        stores.upload(path, target)
        sent.append(path.name)
    return sent


def check_shards(urls: Iterable[str], stores: Stores) -> None:
    """That every shard answers (HEAD, concurrently): a missing one is an error naming it, before the run."""
    urls = list(urls)

    def head(url: str) -> RemoteError | None:
        try:
            stores.head(url)
            return None
        except RemoteError as e:
            return e

    with ThreadPoolExecutor(max(1, min(stores.settings.connections, len(urls)))) as pool:
        for url, err in zip(urls, pool.map(head, urls)):
            if isinstance(err, RemoteError):
                raise RemoteNotFound(f"missing shard {url}: {err}") if isinstance(err.__cause__, FileNotFoundError) \
                    else err


@dataclass
class _Range:
    """One request's bytes, shared by the members it covers; ``refs``: reads still to take from it."""

    future: Future
    start: int
    size: int
    refs: int = 0


class ShardCache:
    """Whole shards kept on the node's disk (``cache_dir/shards``) up to ``cache_bytes``, least recently used out,
    for the epochs after the first: a shard read by range is also downloaded in the background (one at a time,
    beside the range reads), and once there its members are read from the file. Shared by the processes of a
    node (files published by rename; a file evicted while mapped stays readable to its reader)."""

    def __init__(self, stores: Stores) -> None:
        self.stores = stores
        self.dir = cache_root(stores.settings) / "shards"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cap = stores.settings.cache_bytes
        self._lock = threading.Lock()
        self._known: dict[str, Path | None] = {}  # shard URL → its file, None while not there
        self._jobs: dict[str, Future] = {}
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-cache")

    def path(self, url: str) -> Path:
        return self.dir / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{url.rsplit('/', 1)[-1]}"

    def local(self, url: str) -> Path | None:
        """The shard's file when it is in the cache; else its download is started (once), and None."""
        with self._lock:
            found = self._known.get(url)
            if found is not None:
                return found
            path = self.path(url)
            if path.is_file():
                os.utime(path)  # used: the last to be evicted
                self._known[url] = path
                return path
            if url not in self._jobs:
                self._jobs[url] = self._pool.submit(self._fetch, url, path)
            return None

    def _fetch(self, url: str, path: Path) -> None:
        try:
            if self.stores.head(url)["size"] <= self.cap:
                self.stores.download(url, path)
                self._evict(keep=path)
        except (RemoteError, OSError) as e:  # the range reads go on; this shard is not cached (disk full, …)
            warnings.warn(f"not caching {url}: {e}", stacklevel=1)

    def _evict(self, keep: Path) -> None:
        """Delete the least recently used shards until the cache fits its cap (``keep``, just written, last)."""
        files = []
        for p in self.dir.iterdir():
            if p.name.startswith("."):
                continue  # another process's download in progress
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((p == keep, st.st_mtime, st.st_size, p))
        total = sum(f[2] for f in files)
        for _, _, size, p in sorted(files):
            if total <= self.cap:
                break
            p.unlink(missing_ok=True)
            total -= size

    def wait(self) -> None:
        """Until the downloads started so far have ended (for tests and benchmarks)."""
        for job in list(self._jobs.values()):
            job.result()


class RemoteBytes:
    """:class:`trainer.data.shard_bytes.ShardBytes`'s interface over shards at URLs: ``will_need`` queues a
    member's range, the queue is sent (coalesced, on a bounded pool) at the next ``member`` call, and
    ``member`` returns the bytes, read now if nothing asked for them. A member whose read failed for good
    raises the same RemoteError whenever it is read again in this process (so the stream's search for the bad
    sample finds it, rather than a retry that might pass). Shards named by a local path (a local dataset
    listed beside one at a URL) are read by a ShardBytes."""

    def __init__(self, settings: RemoteSettings, max_ahead: int = AHEAD_BYTES) -> None:
        self.stores = Stores(settings)
        self.max_ahead = max_ahead
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._queued: list[tuple[str, int, int]] = []
        self._ahead: OrderedDict[tuple[str, int, int], list] = OrderedDict()  # member → [range, reads asked]
        self._held = 0  # bytes of the ranges in _ahead
        self._failed: dict[tuple[str, int, int], str] = {}
        self._local = ShardBytes()
        self.cache = ShardCache(self.stores) if settings.cache_bytes > 0 else None

    @property
    def requests(self) -> int:
        return self.stores.requests

    def will_need(self, shard: str, offset: int, size: int) -> None:
        if not is_url(shard):
            return self._local.will_need(shard, offset, size)
        local = self.cache.local(shard) if self.cache is not None else None
        if local is not None:
            return self._local.will_need(str(local), offset, size)
        with self._lock:
            self._queued.append((shard, offset, size))

    def member(self, shard: str, offset: int, size: int) -> np.ndarray:
        """The ``size`` bytes at ``offset`` of ``shard``."""
        if not is_url(shard):
            return self._local.member(shard, offset, size)
        key = (shard, offset, size)
        with self._lock:
            self._send()
            entry = self._ahead.get(key)
            if entry is not None:
                self._take(key, entry, 1)
            error = self._failed.get(key)
        if error is not None:
            raise RemoteError(error)
        local = self.cache.local(shard) if self.cache is not None and entry is None else None
        if local is not None:
            return self._local.member(str(local), offset, size)
        try:
            if entry is None:
                data = self.stores.read(shard, offset, size)
                return np.frombuffer(data, dtype=np.uint8)
            rng: _Range = entry[0]
            at = offset - rng.start
            try:
                return np.frombuffer(rng.future.result(), dtype=np.uint8)[at:at + size]
            except RemoteError:
                if rng.size == size:
                    raise
                # a coalesced request failed: this member's own request gets its own tries
                return np.frombuffer(self.stores.read(shard, offset, size), dtype=np.uint8)
        except RemoteError as e:
            with self._lock:
                self._failed[key] = str(e)
            raise

    def __call__(self, rec: Any) -> np.ndarray:
        return self.member(rec.shard, rec.offset, rec.size)

    def _take(self, key: tuple[str, int, int], entry: list, reads: int) -> None:
        """``reads`` of ``key`` taken (or dropped); the member and its range are let go when none is left."""
        entry[1] -= reads
        entry[0].refs -= reads
        if entry[1] <= 0:
            del self._ahead[key]
        if entry[0].refs <= 0:
            self._held -= entry[0].size

    def _send(self) -> None:
        """Request the queued members' ranges, adjacent ones together; drop the oldest read-ahead past the cap.
        Called with the lock held."""
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        new: list[tuple[str, int, int]] = []
        for key in queued:
            entry = self._ahead.get(key)
            if entry is not None:  # asked for again before it was taken (a draw with replacement)
                entry[1] += 1
                entry[0].refs += 1
            elif key not in self._failed:
                new.append(key)
        groups: list[list[tuple[str, int, int]]] = []
        for key in sorted(set(new)):
            shard, offset, size = key
            if groups:
                g = groups[-1]
                start, end = g[0][1], max(o + s for _, o, s in g)
                if g[0][0] == shard and offset <= end + COALESCE_GAP \
                        and max(end, offset + size) - start <= COALESCE_MAX:
                    g.append(key)
                    continue
            groups.append([key])
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.stores.settings.connections, thread_name_prefix="remote")
        counts: dict[tuple[str, int, int], int] = {}
        for key in new:
            counts[key] = counts.get(key, 0) + 1
        for g in groups:
            shard, start = g[0][0], g[0][1]
            size = max(o + s for _, o, s in g) - start
            rng = _Range(self._pool.submit(self.stores.read, shard, start, size), start, size)
            self._held += size
            for key in g:
                rng.refs += counts[key]
                self._ahead[key] = [rng, counts[key]]
        while self._held > self.max_ahead and self._ahead:
            key, entry = next(iter(self._ahead.items()))
            self._take(key, entry, entry[1])
