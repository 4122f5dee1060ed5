"""data.eval_ids: reading an id list (plain, AudioSet's official CSV, with a header), which record keys
match an id, selecting the eval records, and the config errors. The run that reports the counts is in
test_evaluation_schedule.py."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config
from trainer.data.datasets import resolve_splits
from trainer.data.eval_ids import EvalIdsError, listed_id, read_ids, select_listed
from trainer.data.records import RecordTable, ShardRecord
from trainer.data.settings import DataConfig

OFFICIAL = """\
# Segments csv created Sun Mar  5 10:54:25 2017
# num_ytids=20371, num_segs=20371, num_unique_labels=527, num_positive_labels=51804
# YTID, start_seconds, end_seconds, positive_labels
--4gqARaEJE, 0.000, 10.000, "/m/068hy,/m/07q6cd_,/m/0bt9lr,/m/0jbk"
--BfvyPmVMo, 20.000, 30.000, "/m/03l9g"
--U7joUcTCo, 0.000, 10.000, "/m/01b_21"
"""


def test_reads_a_plain_list_the_official_csv_and_a_header(tmp_path: Path):
    plain = tmp_path / "ids.txt"
    plain.write_text("abc\n\n  def  \nabc\nghi\n")  # blank lines, spaces and repeats
    assert read_ids(plain) == ["abc", "def", "ghi"]
    official = tmp_path / "eval_segments.csv"
    official.write_text(OFFICIAL)
    assert read_ids(official) == ["--4gqARaEJE", "--BfvyPmVMo", "--U7joUcTCo"]
    for header in ("YTID,start_seconds,end_seconds,positive_labels", "id", "key,labels"):
        path = tmp_path / "with_header.csv"
        path.write_text(f"\ufeff{header}\nabc,1\ndef,2\n")  # a byte-order mark, as spreadsheets write
        assert read_ids(path) == ["abc", "def"], header


def test_a_key_matches_its_id_or_the_id_and_an_underscore():
    ids = {"--4gqARaEJE", "a_bcdefghij"}
    assert listed_id("--4gqARaEJE", ids) == "--4gqARaEJE"  # the bare YTID
    assert listed_id("--4gqARaEJE_0000_10000", ids) == "--4gqARaEJE"  # the builder's {YTID}_{start}_{end}
    assert listed_id("a_bcdefghij_30000_40000", ids) == "a_bcdefghij"  # an underscore inside the id
    assert listed_id("--4gqARaEJEx_0000_10000", ids) is None  # a longer id is another clip
    assert listed_id("Y--4gqARaEJE", ids) is None
    assert listed_id("a", ids) is None


def _table(keys: list[str]) -> RecordTable:
    return RecordTable.from_records(ShardRecord(k, "s.tar", 512 * i, 100, (0,), 10.0) for i, k in enumerate(keys))


def test_selects_the_listed_records_and_counts_what_it_found(tmp_path: Path):
    ids = tmp_path / "eval_segments.csv"
    ids.write_text(OFFICIAL)
    records = _table(["--BfvyPmVMo_20000_30000", "unlisted_0_10000", "--4gqARaEJE"])
    kept, found = select_listed(records, ids)
    assert [r.key for r in kept] == ["--BfvyPmVMo_20000_30000", "--4gqARaEJE"]
    assert found.counts() == {"file": str(ids), "expected": 3, "present": 2, "missing": 1, "not_listed": 1}
    assert found.missing == ["--U7joUcTCo"]
    found.write_missing(tmp_path / "missing.txt")
    assert (tmp_path / "missing.txt").read_text() == "--U7joUcTCo\n"


def test_a_list_matching_no_eval_clip_is_an_error_naming_the_file(built_shards, tmp_path: Path):
    ids = tmp_path / "other_ids.txt"
    ids.write_text("--4gqARaEJE\n")
    cfg = DataConfig(train=[str(built_shards["train"])], eval=[str(built_shards["eval"])], eval_ids=str(ids))
    with pytest.raises(EvalIdsError, match=rf"^data\.eval_ids: none of the 1 ids in {re.escape(str(ids))} matches one "
                                           r"of the 16 eval clips \(keys such as 'syn_ev_"):
        resolve_splits(cfg)
    ids.write_text("# nothing listed\n")
    with pytest.raises(EvalIdsError, match=r"none of the 0 ids"):
        resolve_splits(cfg)


def test_eval_ids_config_errors(built_shards, tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^data\.eval_ids: selects eval clips; it needs data\.eval"):
        load_config(None, ["data.train=[x]", "data.eval_ids=ids.txt"], check_paths=False)
    data = [f"data.train=[{built_shards['train']}]", f"data.eval=[{built_shards['eval']}]"]
    with pytest.raises(ConfigError, match=r"^data\.eval_ids: .*nope\.txt does not exist"):
        load_config(None, data + [f"data.eval_ids={tmp_path / 'nope.txt'}"])
