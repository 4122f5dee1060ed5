"""The AudioSet metadata shipped in tools/audioset: the builder's default vocabulary is AudioSet's 527 classes,
make_synthetic draws the same classes and label sets as when they were read from Google's CSVs, the ontology's
ancestors are those of its child_ids, and a non-editable install carries the files (package data, read through
importlib.resources)."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tools import audioset
from tools import make_synthetic as ms
from tools.build_shards import load_vocabulary

REPO = Path(__file__).resolve().parents[1]


def _digest(label_sets: list[list[str]]) -> str:
    return hashlib.sha256("".join(",".join(s) + "\n" for s in label_sets).encode()).hexdigest()[:16]


def test_default_vocabulary_is_audiosets_527_classes():
    vocab = load_vocabulary(None)
    assert vocab == audioset.vocabulary()
    assert len(vocab) == 527 and len(set(vocab.mids)) == 527
    assert (vocab.mids[0], vocab.names[0]) == ("/m/09x0r", "Speech")
    assert (vocab.mids[137], vocab.names[137]) == ("/m/04rlf", "Music")
    assert vocab.mids[526] == "/m/07hvw1"
    assert vocab.digest() == "fbd94e8a38594c56"  # sha256 of the 527 mids in index order, as Google lists them


def test_label_sets_and_chosen_classes_are_as_read_from_the_csvs():
    # Digests and classes computed from balanced_train_segments.csv / eval_segments.csv before they were shipped.
    train, evals = audioset.label_sets("balanced_train"), audioset.label_sets("eval")
    assert (len(train), _digest(train)) == (22160, "b8695fa91b0160ac")
    assert (len(evals), _digest(evals)) == (20371, "a0067eec657887f6")
    assert ms.choose_classes(train, 10) == ["/m/0jbk", "/m/068hy", "/m/0bt9lr", "/m/01yrx", "/t/dd00125", "/m/0ch8v",
                                           "/t/dd00129", "/m/07yv9", "/m/0k4j", "/m/02mk9"]


def test_ontology_is_googles_and_its_ancestors_follow_child_ids():
    raw = (REPO / "tools" / "audioset" / audioset.ONTOLOGY_FILE).read_bytes()
    # sha256 of ontology.json as Google publishes it (the shipped file is its gzip)
    assert hashlib.sha256(gzip.decompress(raw)).hexdigest()[:16] == "4046f49615198bb7"
    entries = json.loads(gzip.decompress(raw))
    onto = audioset.ontology()
    assert len(onto) == len(entries) == 632
    assert all(m in onto for m in audioset.vocabulary().mids)
    # ancestors by another route: grow every class's set of ancestors to a fixed point
    above = {e["id"]: set() for e in entries}
    changed = True
    while changed:
        changed = False
        for e in entries:
            for child in e["child_ids"]:
                new = {e["id"]} | above[e["id"]]
                if not new <= above[child]:
                    above[child] |= new
                    changed = True
    for mid, ancestors in above.items():
        assert onto.ancestors(mid) == ancestors, mid
        assert all(mid in onto.descendants(a) for a in ancestors)
    assert {onto.name(m) for m in onto.ancestors("/m/0bt9lr")} == {"Animal", "Domestic animals, pets"}  # Dog
    assert {onto.name(m) for m in onto.ancestors("/m/06by7")} == {"Music genre", "Music"}  # Rock music; the genre is abstract


def test_non_editable_install_ships_the_metadata(tmp_path):
    """Build and install the project (no dependencies: the test venv has them) into a target directory,
    then run the CLIs from another directory with only that install on the path. The build runs on a copy
    of the sources, so it leaves nothing in the checkout."""
    src, target = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("tools", "trainer"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, timeout=300, capture_output=True)
    assert (target / "tools" / "audioset" / "class_labels_indices.csv").is_file()
    assert (target / "tools" / "audioset" / audioset.ONTOLOGY_FILE).is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    for args in (["-m", "tools.build_shards", "--help"],
                 ["-m", "tools.make_synthetic", "--out", "synthetic_check", "--clips", "8", "--eval-clips", "4"]):
        proc = subprocess.run([sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert len(list((elsewhere / "synthetic_check" / "audio" / "unbalanced").iterdir())) == 8
    probe = subprocess.run([sys.executable, "-c", "import tools.audioset; print(tools.audioset.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert Path(probe.stdout.strip()).is_relative_to(target)  # the installed copy, not the checkout
