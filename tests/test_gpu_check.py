"""The GPU check and the offline install, checked without a GPU or the network: gpu_check.sh's dry run lists
its sections and the wheels it would install (from the committed list or a wheel folder, split wheels
included) and changes nothing; tools/offline_wheels.py asks for exactly what the GPU machine lacks, for either
DALI build; the start-up check's library report and hint."""
from __future__ import annotations

import subprocess

import pytest

from runkit import REPO
from tools.offline_wheels import missing_requirements, platforms, project_requirements, read_have

SECTIONS = ("versions", "gpu tests", "train step", "loader", "fallback")


def _dry_run(*args: str) -> str:
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_dry_run_lists_the_sections_and_the_wheels_and_changes_nothing(tmp_path):
    out = _dry_run(str(tmp_path / "report"))
    for name in SECTIONS:
        assert f"  {name} (≤ " in out
    budget = int(out.split("at most ")[1].split(" s")[0])
    assert budget - 60 <= 7 * 60  # the fallback runs only when DALI does not load, in place of most of the rest
    wheels = (REPO / "benchmarks" / "gpu_wheels.txt").read_text().split()[::2]
    assert all(w in out for w in wheels) and any(w.startswith("nvidia_dali_cuda130-") for w in wheels)
    assert f"{len(wheels)} wheels, " in out and "MiB" in out
    assert not (tmp_path / "report").exists()


def test_dry_run_with_a_wheel_folder_joins_split_wheels_only_in_words(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / "a-1.0-py3-none-any.whl").write_bytes(b"x" * 2048)
    for part in ("aa", "ab"):
        (folder / f"big-1.0-py3-none-any.whl.part-{part}").write_bytes(b"y" * 1024)
    out = _dry_run("--wheels", str(folder), str(tmp_path / "report"))
    assert "would join big-1.0-py3-none-any.whl.part-* into big-1.0-py3-none-any.whl" in out
    assert "a-1.0-py3-none-any.whl" in out and "3 files" in out
    assert sorted(p.name for p in folder.iterdir()) == ["a-1.0-py3-none-any.whl", "big-1.0-py3-none-any.whl.part-aa",
                                                         "big-1.0-py3-none-any.whl.part-ab"]


@pytest.mark.parametrize("cuda, dali", [("13", {"nvidia-dali-cuda130"}), ("12", {"nvidia-dali-cuda120",
                                                                                 "nvidia-cufft-cu12"})])
def test_offline_wheels_ask_for_what_the_gpu_machine_lacks(cuda, dali):
    """The GPU machine (benchmarks/gpu_machine_packages.txt) lacks webdataset, braceexpand, soundfile, soxr, obstore
    and DALI; the CUDA 12 build also needs its cuFFT 11 wheel, the CUDA 13 one uses torch's cuFFT."""
    have = read_have(REPO / "benchmarks" / "gpu_machine_packages.txt")
    assert have["torch"] == "2.11.0+cu130" and "nvidia-cufft" in have
    reqs = missing_requirements(project_requirements(cuda, dev=True), have, "3.12")
    assert {r.name for r in reqs} == {"webdataset", "braceexpand", "soundfile", "soxr", "obstore"} | dali


def test_a_platform_tag_brings_the_older_manylinux_tags():
    tags = platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags and platforms("win_amd64") == ["win_amd64"]


def test_the_start_up_check_names_the_libraries_it_loaded_and_the_build_to_install(monkeypatch):
    """check_gpu_frontend's report and hint, without a GPU: /proc/self/maps gives the files mapped (here the
    C library), and the hint names the DALI build for torch's CUDA major and the cuFFT that build loads."""
    import torch

    from trainer.data import streams

    assert any(p.startswith("/") and "libc" in p for p in streams.loaded_cuda_libraries(("libc.so", "libc-")))
    monkeypatch.setattr(streams, "dali_build", lambda: "nvidia-dali-cuda120 2.4.0")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert "install nvidia-dali-cuda130" in streams.cuda_build_hint() and ".[cuda13]" in streams.cuda_build_hint()
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    assert "libcufft.so.11" in streams.cuda_build_hint() and "nvidia-cufft-cu12" in streams.cuda_build_hint()
