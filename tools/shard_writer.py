"""Deterministic webdataset tar shards with DALI ``.idx`` files.

Shards are byte-identical for identical samples: every member gets mtime 0, uid/gid 0, empty
owner names and mode 0o644, and a sample's members are written in sorted name order. The tar and
its index are written under temporary names (``trainer.data.atomic``) and renamed, index first, so an
existing ``.tar`` always means a finished shard with its index beside it.
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from trainer.data.atomic import atomic_write, temp_path

TAR_BLOCK = 512
IDX_VERSION = "v1.2"  # the format DALI's wds2idx writes and fn.readers.webdataset reads


@dataclass(frozen=True)
class Member:
    name: str  # "{key}.{ext}"
    offset: int  # byte offset of the member's data (after its header) in the tar
    size: int


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def split_name(name: str) -> tuple[str, str]:
    """Key and extension, split at the first dot as webdataset and DALI do."""
    base = name.rsplit("/", 1)[-1]
    dot = base.find(".")
    return (name, "") if dot < 0 else (name[: len(name) - len(base) + dot], base[dot + 1 :])


class ShardWriter:
    """Write one shard: ``add(key, {ext: bytes})`` per sample, then ``close()`` to publish it."""

    def __init__(self, tar_path: str | Path) -> None:
        self.tar_path = Path(tar_path)
        self.idx_path = self.tar_path.with_suffix(".idx")
        self._tmp = temp_path(self.tar_path, private=True)
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.GNU_FORMAT)
        self.samples: list[list[Member]] = []

    @property
    def size(self) -> int:
        return self._tar.offset

    def add(self, key: str, members: dict[str, bytes]) -> dict[str, Member]:
        """Append a sample; returns where each member's data landed, by extension."""
        if "." in key or "/" in key or any(c.isspace() for c in key):
            # a dot splits the name for webdataset; whitespace splits the .idx line
            raise ValueError(f"{self.tar_path}: key {key!r} must contain no dots, slashes or whitespace")
        written = {}
        for ext in sorted(members):
            data = members[ext]
            self._tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
            # The data ends, padded to a block, where the tar offset now is; this holds for any
            # header length (GNU long names add extra header blocks).
            padded = -(-len(data) // TAR_BLOCK) * TAR_BLOCK
            written[ext] = Member(f"{key}.{ext}", self._tar.offset - padded, len(data))
        self.samples.append([written[ext] for ext in sorted(written)])
        return written

    def close(self) -> None:
        self._tar.close()
        write_index(self.idx_path, self.samples)
        os.replace(self._tmp, self.tar_path)

    def abort(self) -> None:
        self._tar.close()
        self._tmp.unlink(missing_ok=True)


def write_index(path: str | Path, samples: list[list[Member]]) -> None:
    """DALI v1.2 index: ``v1.2 N``, then per sample ``ext offset size name`` for each member."""
    with atomic_write(path, private=True) as f:
        f.write(f"{IDX_VERSION} {len(samples)}\n")
        for members in samples:
            f.write(" ".join(f"{split_name(m.name)[1]} {m.offset} {m.size} {m.name}" for m in members) + "\n")


def read_index(path: str | Path) -> list[list[Member]]:
    """Parse a v1.2 index; raises ValueError naming the file and line on a malformed one."""
    with open(path) as f:
        lines = f.read().splitlines()
    if not lines or lines[0].split()[:1] != [IDX_VERSION] or len(lines[0].split()) != 2:
        raise ValueError(f"{path}: first line must be '{IDX_VERSION} <num_samples>'")
    n = int(lines[0].split()[1])
    if n != len(lines) - 1:
        raise ValueError(f"{path}: header says {n} samples but has {len(lines) - 1} lines")
    samples = []
    for lineno, line in enumerate(lines[1:], 2):
        f4 = line.split()
        if not f4 or len(f4) % 4:
            raise ValueError(f"{path}:{lineno}: expected groups of 'ext offset size name'")
        try:
            samples.append([Member(f4[i + 3], int(f4[i + 1]), int(f4[i + 2])) for i in range(0, len(f4), 4)])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: offset and size must be integers") from None
    return samples


def scan_tar(path: str | Path) -> tuple[list[Member], str | None]:
    """Every regular member of a tar with its data offset and size, read until the first error.

    Returns the members read and the error (None for a sound tar), so a checker can name the
    member where a truncated or corrupt tar breaks off.
    """
    members: list[Member] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if m.isreg():
                    members.append(Member(m.name, m.offset_data, m.size))
    except (tarfile.TarError, EOFError) as e:
        return members, str(e)
    return members, None
