"""The streams' batch plans without DALI (trainer/data/plans.py): which records each batch holds, substitutes for
corrupt samples, the resumable position, and evaluation's order and missing clips."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from trainer.data.corrupt import CorruptLog
from trainer.data.plans import EvalPlan, TrainPlan
from trainer.data.records import RecordTable, ShardRecord


def _table(n: int) -> RecordTable:
    return RecordTable.from_records(ShardRecord(f"k{i:03d}", f"s{i % 3}.tar", 512 * i, 100, (i % 4,), 10.0, 1.0 + i % 2)
                                    for i in range(n))


def test_train_plan_runs_into_the_next_epoch_and_resumes_where_it_was(tmp_path: Path):
    plan = TrainPlan(_table(40), 4, seed=3, rank=1, world_size=2, num_samples=40)
    assert len(plan) == 5 and plan.batches().shape == (5, 4)
    planned = list(itertools.islice(plan.plan(3), 4))  # batches 3, 4 of epoch 0, then 0, 1 of epoch 1
    assert [key for key, _ in planned] == [(3, 0, 3), (3, 0, 4), (3, 1, 0), (3, 1, 1)]
    assert [idx for _, idx in planned] == [*plan.batches(0)[3:].tolist(), *plan.batches(1)[:2].tolist()]
    assert plan.batch(2) == plan.batches()[2].tolist() and plan.key(2) == (3, 0, 2)
    plan.position = 3
    again = TrainPlan(_table(40), 4, seed=3, rank=1, world_size=2, num_samples=40)
    again.load_state_dict(plan.state_dict())
    again.set_epoch(0)  # the current epoch again: the resumed position is kept
    assert (again.epoch, again.position) == (0, 3) and (again.batches() == plan.batches()).all()
    again.set_epoch(1)
    assert (again.epoch, again.position) == (1, 0)
    other_rank = TrainPlan(_table(40), 4, seed=3, rank=0, world_size=2, num_samples=40)
    assert (other_rank.batches() != plan.batches()).any()


def test_a_corrupt_sample_is_replaced_the_same_way_whenever_it_was_found(tmp_path: Path):
    table = _table(30)
    plan = TrainPlan(table, 5, seed=0, rank=0, world_size=1, weighted=False,
                     corrupt=CorruptLog(tmp_path / "corrupt.jsonl", len(table), 0.5))
    first = plan.batch(1)
    bad = first[2]
    with pytest.warns(UserWarning, match=f"skipping corrupt training sample {table.key(bad)}"):
        plan.exclude({bad: "not FLAC"}, 1)
    replaced = plan.batch(1)
    assert bad not in replaced and replaced[:2] + replaced[3:] == first[:2] + first[3:]
    # another rank (or a resumed run) that reads the log plans the same batch
    later = TrainPlan(table, 5, seed=0, rank=0, world_size=1, weighted=False,
                      corrupt=CorruptLog(tmp_path / "corrupt.jsonl", len(table), 0.5))
    assert next(later.plan(1))[1] == replaced
    strict = TrainPlan(table, 5, seed=0, rank=0, world_size=1)
    with pytest.raises(RuntimeError, match=rf"corrupt FLAC member {table.key(bad)}\.flac in shard "
                                           rf"{table.shard(bad)}: not FLAC"):
        strict.exclude({bad: "not FLAC"}, 1)


def test_eval_plan_covers_every_clip_once_and_reports_those_left_out():
    table = _table(11)
    plans = [EvalPlan(table, 2, rank, 3) for rank in range(3)]
    assert len({len(p) for p in plans}) == 1  # collectives stay in step
    assert sorted(i for p in plans for b in p.batches for i in b) == list(range(11))
    last = plans[2]
    assert [key for key, _ in itertools.islice(last.plan(0), 4)] == [0, 1, 0, 1]  # its empty batch is not planned
    gone = last.batches[0][0]
    with pytest.warns(UserWarning, match=f"evaluation clip {table.key(gone)} in {table.shard(gone)} does not decode"):
        last.exclude({gone: "truncated"}, 0)
    assert gone not in [i for b in last.batches for i in b]
    assert last.missing == {table.key(gone): f"{table.shard(gone)}: truncated"}
