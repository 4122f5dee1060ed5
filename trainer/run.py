"""Train an audio tagger with the PSLA recipe, optionally from inline pseudo strong labels.

    accelerate launch trainer/run.py configs/full_as.yaml [dotted.key=value ...]
    python trainer/run.py configs/full_as.yaml [dotted.key=value ...] --check    # validate only, train nothing

The story: build the data streams, build the models, train epoch by epoch (checkpointing after each and
evaluating every train.eval_every epochs), then write the best single model, the weight-averaged model and
the checkpoint ensemble.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm import tqdm

from trainer import results
from trainer.averaging import average_state_dicts
from trainer.checkpointing import CheckpointUnreadable, Progress, SaveFailed, copy_weights, find_checkpoints, \
    load_checkpoint, save_checkpoint, save_weights, weights_path
from trainer.config import Config, ConfigError, load_config, missing_paths
from trainer.cpu_tuning import configure_cpu
from trainer.devices import DeviceError, resolve_device
from trainer.data.chunks import Chunking
from trainer.data.corrupt import CorruptLog, TooManyCorrupt, seal
from trainer.data.datasets import SplitError, Splits, resolve_splits
from trainer.data.eval_ids import EvalIdsError
from trainer.data.features import FrontEnd, build_frontend
from trainer.data.remote import RemoteError, is_url
from trainer.data.seeding import STEP, torch_seed
from trainer.data.streams import EvalStream, TrainStream, check_gpu_frontend
from trainer.data.strong_labels import Event, load_strong_labels
from trainer.ensemble import mean_predictions
from trainer.eval_schedule import EvalSchedule, best_epoch
from trainer.evaluate import Predictions, predict_chunks, predict_clips, training_chunking
from trainer.losses import training_loss
from trainer.models import build_model, load_weights
from trainer.models.imagenet import PretrainedUnavailable
from trainer.optim import build_optimizer, build_scheduler
from trainer.faults import NonFinite, Preempted, Preemption, RunExists, claim_run
from trainer.fingerprint import ResumeMismatch, check_resume, fingerprint, flat
from trainer.psl import ChunkedTeacherStudent, ChunkOracle, draws_per_epoch
from trainer.rundir import RunDir
from trainer.runs import build_teacher
from trainer.settings import teacher_members
from trainer.steplog import Flush, StepLog


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. optim.lr=1e-4")
    p.add_argument("--check", action="store_true",
                   help="validate the config and overrides, print the batch plan and the resolved config, and exit "
                        "without training or touching the run directory (datasets not built yet are notes)")
    return p.parse_args(argv)


def _plan(batch_size: int, world: int, accumulation: int) -> str:
    return (f"{batch_size} clips per process and step × {world} × {accumulation} accumulation = "
            f"{batch_size * world * accumulation} clips per optimizer step")


def check(path: str, overrides: list[str]) -> Config:
    """``--check``: the config validated as a run validates it, its batch plan on this launch's processes
    (WORLD_SIZE, 1 without a launcher) and the resolved config, printed by rank 0. Datasets and files that do not
    exist yet (shards built later) are listed as notes, not errors; when they all exist (and none is at a URL: it
    reads nothing over the network) the splits are resolved and the datasets' normalisation stats filled in, as the
    run would."""
    cfg = load_config(path, overrides, check_paths=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch_size, accumulation = batch_plan(cfg, world)
    if cfg.data.global_batch_size is None:
        accumulation = cfg.optim.grad_accum
    lines = [f"{path}: valid", f"{world} process{'es' if world > 1 else ''}: {_plan(batch_size, world, accumulation)}"]
    missing = missing_paths(cfg)
    lines += [f"note: {m}" for m in missing]
    urls = [spec for split in (cfg.data.train, cfg.data.valid, cfg.data.eval) for spec in split if is_url(spec)]
    if urls:  # --check reads nothing over the network
        lines.append(f"note: {len(urls)} dataset(s) at a URL, reached when the run starts: {', '.join(urls)}")
    if not missing and not urls:
        data = resolve_data(cfg)
        cfg.features = data.feature_config(cfg.features)
        lines.append(f"data: {len(data.train)} train, {len(data.valid)} valid, {len(data.eval)} eval clips; "
                     f"{len(data.vocab)} classes")
        lines += [f"warning: {w}" for w in data.warnings]
    lines += [f"run directory: {cfg.run_dir}", "resolved config:", yaml.safe_dump(cfg.to_dict(), sort_keys=False)]
    if int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(lines), flush=True)
    return cfg


def main(argv: list[str] | None = None) -> dict:
    """The story of a run: claim its directory, set up data, models and any resumed state, train and evaluate
    epoch by epoch (checkpointing after each), then write the final models and results."""
    args = parse_args(argv)
    if args.check:
        return check(args.config, args.overrides).to_dict()
    cfg = load_config(args.config, args.overrides)
    data = resolve_data(cfg)  # before any work: an empty split or a dataset listed twice stops here
    accelerator = build_accelerator(cfg)
    # Before any work: the main process locks the run directory for the run's life (and with run.overwrite
    # empties it); a refusal (another launch running it, another run's results, a path outside run.dir) stops
    # every rank at once.
    lock = claim_run(accelerator, cfg.run.dir, cfg.run.name, cfg.run.resume, cfg.run.overwrite)
    try:
        t = setup(cfg, accelerator, data)
        for epoch in range(t.progress.epoch, cfg.optim.epochs):
            stop = early_stop(t.schedule, epoch, t.select)
            if stop:
                t.log(stop)
                break
            row = train_epoch(t, epoch)
            if row is None:  # train.stop_after_steps: stopped abruptly, as a crash would
                return {}
            evaluate_epoch(t, epoch, row)
            saved = t.save_checkpoint(epoch + 1, 0)
            if t.preemption.agreed(accelerator):  # a signal during the epoch's last steps or its evaluation
                raise t.preemption.stop(f"after epoch {epoch + 1}", saved)
        t.preemption.restore()
        summary = finish(t)
        accelerator.end_training()
        return summary
    finally:
        if lock is not None:
            lock.release()


def resolve_data(cfg: Config) -> Splits:
    try:
        return resolve_splits(cfg.data)
    except SplitError as e:
        raise ConfigError(str(e)) from None


def batch_plan(cfg: Config, world: int) -> tuple[int, int]:
    """The recipe's global batch on ``world`` processes: (clips per process and step, accumulation)."""
    try:
        return cfg.data.batch_plan(world)
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None


def build_accelerator(cfg: Config) -> Accelerator:
    device = resolve_device(cfg.train.device)
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "no"
    return Accelerator(
        cpu=device == "cpu",
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, whatever the world size
        log_with=cfg.train.trackers or None,
        project_dir=str(cfg.run_dir),
    )


@dataclass
class Training:
    """What the phases of a run share: its config and processes, data streams, models and bookkeeping."""

    cfg: Config
    accelerator: Accelerator
    data: Splits
    frontend: FrontEnd
    run_facts: dict  # recorded with every checkpoint, checked on resume
    train: TrainStream
    splits: dict[str, EvalStream]  # valid, and eval when there is one
    strong: dict[str, list[Event]] | None  # eval's strong labels, for chunk-level metrics
    steps_per_epoch: int
    model: torch.nn.Module | None = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    chunker: ChunkedTeacherStudent | None = None
    progress: Progress = field(default_factory=Progress)  # resumed from
    global_step: int = 0
    schedule: EvalSchedule | None = None
    steplog: StepLog = field(default_factory=StepLog)
    preemption: Preemption | None = None

    @property
    def run(self) -> RunDir:
        return RunDir(self.cfg.run_dir)

    @property
    def log(self) -> Callable[[str], None]:
        return self.accelerator.print

    @property
    def select(self) -> str:
        return f"{self.cfg.evaluation.select_on}_mAP"

    @property
    def result_split(self) -> str:
        return "eval" if "eval" in self.splits else "valid"

    def progress_at(self, epoch: int, step: int) -> Progress:
        return Progress(epoch, step, self.global_step, self.cfg.run.seed, self.train.state_dict(), self.run_facts)

    def save_checkpoint(self, epoch: int, step: int) -> Path:
        durable = (self.run.metrics, self.run.steps)  # the rows the progress counts
        return save_checkpoint(self.accelerator, self.model, self.run.path, self.progress_at(epoch, step), durable)


def setup(cfg: Config, accelerator: Accelerator, data: Splits) -> Training:
    """The run in the directory this process has claimed, ready to train: processes, seed, data streams, models,
    and the state of the checkpoint it resumes from."""
    world = accelerator.num_processes
    batch_size, accumulation = batch_plan(cfg, world)
    if cfg.data.global_batch_size is not None:
        accelerator.gradient_accumulation_steps = accumulation
    if accelerator.device.type == "cpu":
        configure_cpu(int(os.environ.get("LOCAL_WORLD_SIZE", world)), cfg.train.cpu_threads)
    log = accelerator.print
    log(f"{world} process{'es' if world > 1 else ''} on {accelerator.device}: "
        f"{_plan(batch_size, world, accelerator.gradient_accumulation_steps)}")
    checkpoints = find_checkpoints(cfg.run.resume, cfg.run_dir, log)  # newest first; unreadable ones named, left out
    if checkpoints:  # a resumed run repeats the interrupted one: it keeps that run's seed
        seed = checkpoints[0][1].seed
        if seed is not None and seed != cfg.run.seed:
            log(f"warning: run.seed {cfg.run.seed} differs from the checkpoint's seed {seed}; resuming with {seed}")
            cfg.run.seed = seed
    set_seed(cfg.run.seed)
    t, allowed = setup_data(cfg, accelerator, data, batch_size, checkpoints)
    setup_models(t, resumed=bool(checkpoints))
    resume(t, checkpoints, allowed)
    return t


def setup_data(cfg: Config, accelerator: Accelerator, data: Splits, batch_size: int,
               checkpoints: list[tuple[Path, Progress]]) -> tuple[Training, list[str]]:
    """The run's front-end, files and streams; before anything is written, a resume the checkpoint's fingerprint
    refuses stops here (and the changes it allows are returned, to be logged)."""
    run, log = RunDir(cfg.run_dir), accelerator.print
    for warning in data.warnings:
        log(f"warning: {warning}")
    vocab = data.vocab
    cfg.features = data.feature_config(cfg.features)  # normalisation stats from dataset.json where unset
    frontend = build_frontend(cfg.features)
    if accelerator.device.type == "cuda":
        # DALI's GPU ops load, or one error says what is missing
        log(f"GPU front-end: {check_gpu_frontend(frontend, accelerator.device)}")
        torch.backends.cudnn.benchmark = True  # fixed input shapes
    run_facts = fingerprint(cfg.to_dict(), data)
    allowed = []
    if checkpoints:  # before anything is written: a refused resume leaves the run as it was
        allowed = check_resume(checkpoints[0][1].fingerprint, run_facts, cfg.run.allow_changed, checkpoints[0][0])
    if accelerator.is_main_process:
        seal(run.corrupt_samples)  # a row torn by a crash must not swallow the next one appended
        cfg.save(run.config)  # resolved: predict and PSL teachers rebuild the same features from it
        vocab.save(run.vocabulary)
        if data.eval_ids:
            data.eval_ids.write_missing(run.missing_eval_ids)
        accelerator.init_trackers(cfg.run.name, config=flat(cfg.to_dict()))
    accelerator.wait_for_everyone()
    world = accelerator.num_processes
    where = dict(rank=accelerator.process_index, world_size=world, device=accelerator.device)
    corrupt = CorruptLog(run.corrupt_samples, len(data.train), cfg.data.max_corrupt_fraction) \
        if cfg.data.on_corrupt == "skip" else None
    num_samples = cfg.data.num_samples
    if num_samples is None and cfg.psl.chunk_seconds is not None:  # PSL's epoch: every chunk once
        num_samples = draws_per_epoch(len(data.train), Chunking.of(frontend, cfg.psl.chunk_seconds, cfg.psl.chunk_hop),
                                      frontend.num_frames, cfg.psl.chunks_per_clip)
    train = TrainStream(data.train, len(vocab), cfg.data.loader(batch_size), frontend, cfg.augment, cfg.run.seed, **where,
                        weighted=cfg.data.weighted, num_samples=num_samples, corrupt=corrupt)
    eval_loader = cfg.data.loader(cfg.evaluation.batch_size)
    splits = {"valid": EvalStream(data.valid, len(vocab), eval_loader, frontend, **where)}
    if data.eval:
        splits["eval"] = EvalStream(data.eval, len(vocab), eval_loader, frontend, **where)
    strong = load_strong_labels(cfg.evaluation.strong_labels, vocab) if cfg.evaluation.strong_labels else None
    steps_per_epoch = min(len(train), cfg.train.steps_per_epoch or len(train))
    log(f"data: {len(data.train)} train, {len(data.valid)} valid, {len(data.eval)} eval clips; "
        f"{len(vocab)} classes; {steps_per_epoch} steps/epoch on each of {world} processes; {train.num_threads} "
        f"DALI threads per process (data.num_threads: {cfg.data.num_threads})")
    if data.eval_ids:
        log(f"data.eval_ids: {data.eval_ids}")
    return Training(cfg, accelerator, data, frontend, run_facts, train, splits, strong, steps_per_epoch), allowed


def setup_models(t: Training, resumed: bool) -> None:
    """The student (and PSL's teacher and chunker), its optimizer and schedule, prepared for the processes."""
    cfg, accelerator, vocab = t.cfg, t.accelerator, t.data.vocab
    # One process downloads any ImageNet weights, the others read its cache; a resumed checkpoint has every weight.
    with accelerator.main_process_first():
        model = build_model(cfg.model, len(vocab), load_pretrained=not resumed)
    if cfg.model.init:
        load_weights(model, weights_path(cfg.model.init))
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.psl.chunk_seconds is not None:
        teacher = build_teacher(cfg.psl.teacher, cfg.features, vocab, accelerator.device, cfg.train.channels_last,
                                cfg.train.compile) if cfg.psl.teacher else None
        oracle = ChunkOracle(load_strong_labels(cfg.psl.oracle, vocab), len(vocab)) if cfg.psl.oracle else None
        t.chunker = ChunkedTeacherStudent(teacher, Chunking.of(t.frontend, cfg.psl.chunk_seconds, cfg.psl.chunk_hop),
                                          cfg.psl.chunks_per_clip,
                                          cfg.psl.threshold if cfg.psl.targets == "hard" else None, oracle)
    optimizer_steps = math.ceil(t.steps_per_epoch / accelerator.gradient_accumulation_steps)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, optimizer_steps)
    t.model, t.optimizer, t.scheduler = accelerator.prepare(model, optimizer, scheduler)
    if cfg.train.compile:
        t.model = torch.compile(t.model)
    t.log(f"model: {cfg.model.name}, {sum(p.numel() for p in t.model.parameters()) / 1e6:.2f} M parameters"
          + (f", from {cfg.model.pretrained} weights" if cfg.model.pretrained and not resumed else "")
          + (f"; teacher from {' + '.join(_teacher_dirs(cfg))}, alpha {cfg.psl.alpha}" if cfg.psl.teacher else ""))


def resume(t: Training, checkpoints: list[tuple[Path, Progress]], allowed: list[str]) -> None:
    """Load the newest checkpoint that loads (none: a fresh start), rewind the run's rows to it and rebuild the
    evaluation history; from here a preemption signal is recorded, so no rewrite is torn."""
    if checkpoints:
        loaded, t.progress = load_checkpoint(t.accelerator, checkpoints, t.log)
        if loaded != checkpoints[0][0]:  # an older one: check it too
            allowed = check_resume(t.progress.fingerprint, t.run_facts, t.cfg.run.allow_changed, loaded)
        for note in allowed:
            t.log(f"warning: {note}")
        t.log(f"resumed from {loaded}: epoch {t.progress.epoch + 1}, step {t.progress.step}")
    t.global_step = t.progress.global_step
    t.steplog, t.preemption = StepLog(), Preemption()
    if t.accelerator.is_main_process:
        rewind(t.run, t.progress)
    t.accelerator.wait_for_everyone()
    t.schedule = eval_schedule(t.cfg, t.run)


def rewind(run: RunDir, progress: Progress) -> None:
    """Drop the metrics.csv and steps.csv rows written after the checkpoint: the resumed run writes them again."""
    results.truncate_rows(run.metrics, progress.epoch)
    results.truncate_rows(run.steps, progress.global_step)


def eval_schedule(cfg: Config, run: RunDir) -> EvalSchedule:
    """Which epochs are evaluated and when to stop early, from the scores of those evaluated so far."""
    select = f"{cfg.evaluation.select_on}_mAP"
    return EvalSchedule(cfg.train.eval_every, cfg.optim.epochs, cfg.train.early_stop_patience,
                        results.evaluated(results.read_rows(run.metrics), select))


def early_stop(schedule: EvalSchedule, epoch: int, select: str) -> str | None:
    """Why training stops before ``epoch`` (0-based), or None to train it."""
    if not schedule.stalled(epoch):
        return None
    best = best_epoch(schedule.history)
    return (f"early stop: {select} has not improved for {schedule.patience} epochs "
            f"(best {schedule.history[best]:.4f} in epoch {best})")


def train_epoch(t: Training, epoch: int) -> dict | None:
    """Train ``epoch`` (0-based) from where the run stands; its metrics.csv row so far, or None when
    train.stop_after_steps stopped the run. A preemption signal saves a checkpoint and raises Preempted."""
    cfg, accelerator, model, train = t.cfg, t.accelerator, t.model, t.train
    model.train()
    train.set_epoch(epoch)
    first = t.progress.first_step(epoch)
    if first:
        train.load_state_dict(t.progress.stream)
    losses, clips, started = [], 0, time.perf_counter()
    bar = tqdm(total=t.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    for step, batch in enumerate(train, start=first):
        if step >= t.steps_per_epoch:
            break
        # dropout, chunk picks: resumable
        torch.manual_seed(torch_seed(cfg.run.seed, STEP, epoch, step, accelerator.process_index))
        loss = train_step(t, batch, epoch, step)
        t.global_step += 1
        t.steplog.add(loss, batch["keys"], epoch, step, t.global_step, t.optimizer.param_groups[0]["lr"])
        clips += len(batch["keys"]) * accelerator.num_processes
        bar.update(1)
        last = step + 1 == t.steps_per_epoch
        save = cfg.train.save_every_steps and t.global_step % cfg.train.save_every_steps == 0 and not last
        if last or save or t.global_step % cfg.train.log_every == 0:  # the losses reach the host here only
            flush = t.steplog.flush(accelerator, t.preemption.signal is not None)
            losses += _record(flush, cfg.train.on_nonfinite, accelerator, t.run,
                              clips / (time.perf_counter() - started))
            bar.set_postfix(loss=f"{losses[-1]:.4f}" if losses else "-")
            if flush.stop and not last:  # preempted mid-epoch: save where the ranks are, then stop
                raise t.preemption.stop(f"at epoch {epoch + 1}, step {step + 1}", t.save_checkpoint(epoch, step + 1))
        if save:
            t.save_checkpoint(epoch, step + 1)
        if cfg.train.stop_after_steps and t.global_step >= cfg.train.stop_after_steps:
            t.log(f"stopping abruptly after step {t.global_step} (train.stop_after_steps)")
            return None
    bar.close()
    elapsed = time.perf_counter() - started
    row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
           "lr": t.optimizer.param_groups[0]["lr"], "clips_per_s": clips / elapsed}
    if t.chunker is not None and t.chunker.teacher is not None:  # the teacher's cost, shown separately
        row["clips_per_s_without_teacher"] = clips / max(elapsed - t.chunker.teacher_seconds(), 1e-9)
    return row


def train_step(t: Training, batch: dict, epoch: int, step: int) -> torch.Tensor:
    """One micro-step (an optimizer step when the accumulation is complete); its loss, on the device."""
    accelerator, model, optimizer = t.accelerator, t.model, t.optimizer
    with accelerator.accumulate(model):
        loss = training_loss(model, t.chunker, batch, t.cfg.psl.alpha, accelerator.autocast)
        if t.cfg.train.on_nonfinite == "skip_step" and _nonfinite_anywhere(loss, accelerator):
            t.log(f"warning: non-finite loss at epoch {epoch + 1}, step {step + 1}: step skipped")
        else:
            accelerator.backward(loss)
            if accelerator.sync_gradients and t.cfg.optim.grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), t.cfg.optim.grad_clip)
            optimizer.step()
            if accelerator.sync_gradients:
                t.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return loss


def evaluate_epoch(t: Training, epoch: int, row: dict) -> None:
    """Evaluate this epoch's weights on every split when due, keeping predictions for selection and ensembles;
    log and append the epoch's metrics.csv row and save its weights. An epoch not evaluated has empty evaluation
    cells in metrics.csv (every row has the same columns)."""
    accelerator, run = t.accelerator, t.run
    unwrapped = accelerator.unwrap_model(t.model, keep_torch_compile=False)
    due = t.schedule.due(epoch + 1)
    for split, stream in t.splits.items():
        m = {}
        if due:
            preds = predict_clips(unwrapped, stream, accelerator)
            m = preds.metrics(list(t.data.vocab.names))
            if accelerator.is_main_process:
                preds.save(_prediction_path(run, split, f"epoch_{epoch + 1}"))
        row.update({f"{split}_{k}": m.get(k) for k in ("mAP", "mAUC", "dprime")})
    if due:
        t.schedule.record(epoch + 1, row[t.select])
    shown = {k: v for k, v in row.items() if v is not None}
    t.log("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
    if accelerator.is_main_process:
        results.append_row(run.metrics, row)
        results.plot_curves(run.metrics, run.curves)
        accelerator.log({f"epoch/{k}": v for k, v in shown.items()}, step=t.global_step)
        save_weights(unwrapped.state_dict(), run.epoch_weights(epoch + 1))


def _nonfinite_anywhere(loss: torch.Tensor, accelerator: Accelerator) -> bool:
    """Whether the loss is non-finite on any rank: all skip the step together (a host sync every step)."""
    return bool(accelerator.reduce((~torch.isfinite(loss.detach())).float(), "sum").item() > 0)


def _record(flush: Flush, on_nonfinite: str, accelerator: Accelerator, run: RunDir, rate: float) -> list[float]:
    """Write a flush's steps.csv rows and tracker values; stop at a non-finite loss unless skipping those."""
    rows = flush.rows
    if flush.nonfinite is not None and on_nonfinite == "fail":
        rows = rows[:flush.first_nonfinite]
    if accelerator.is_main_process:
        for row in rows:
            results.append_row(run.steps, row)
        if rows:
            accelerator.log({"train/loss": float(np.mean([r["loss"] for r in rows])), "train/lr": rows[-1]["lr"],
                             "train/clips_per_s": rate}, step=rows[-1]["global_step"])
    if len(rows) < len(flush.rows):
        raise flush.nonfinite
    return [r["loss"] for r in rows]


def finish(t: Training) -> dict:
    """The best single model, the weight-averaged model and the checkpoint ensemble, scored and written."""
    cfg, accelerator, splits, result_split = t.cfg, t.accelerator, t.splits, t.result_split
    eval_ids, vocab, strong, chunker, frontend = t.data.eval_ids, t.data.vocab, t.strong, t.chunker, t.frontend
    model = accelerator.unwrap_model(t.model, keep_torch_compile=False)
    run = t.run
    names = list(vocab.names)
    rows = results.read_rows(run.metrics)
    epochs = [int(r["epoch"]) for r in rows]
    select = cfg.evaluation.select_on
    scores = results.evaluated(rows, f"{select}_mAP")
    evaluated, best_at = sorted(scores), best_epoch(scores)
    summary = {"selected_on": select, "best_epoch": best_at, "result_split": result_split,
               "epochs_trained": len(epochs), "stopped_early": len(epochs) < cfg.optim.epochs}
    if cfg.psl.teacher:  # the members whose mean chunk_level.teacher reports
        summary["teacher"] = _teacher_dirs(cfg)
    if eval_ids is not None:  # the results are on the listed clips present
        summary["eval_ids"] = eval_ids.counts()

    # Each evaluated epoch's predictions were saved once; the best single model's are one of them.
    members = [Predictions.load(run.predictions(result_split, f"epoch_{e}")) for e in evaluated]
    best = members[evaluated.index(best_at)]

    wa_end = cfg.train.wa_end or cfg.optim.epochs
    # a run stopped early before wa_start averages its last epoch alone; "epochs" says which were averaged
    wa_epochs = [e for e in epochs if cfg.train.wa_start <= e <= wa_end] or epochs[-1:]
    wa_state = average_state_dicts([run.epoch_weights(e) for e in wa_epochs])
    model.load_state_dict(wa_state)
    wa = predict_clips(model, splits[result_split], accelerator)

    keys, probs = mean_predictions([(p.keys, p.probs) for p in members])
    ensemble = Predictions(keys, probs, members[0].targets)

    metrics = {"best_single": best.metrics(names), "weight_averaged": wa.metrics(names),
               "checkpoint_ensemble": ensemble.metrics(names)}
    summary["best_single"] = results.scalar_metrics(metrics["best_single"])
    summary["weight_averaged"] = {"epochs": [wa_epochs[0], wa_epochs[-1]],
                                  **results.scalar_metrics(metrics["weight_averaged"])}
    summary["checkpoint_ensemble"] = {"epochs": evaluated, **results.scalar_metrics(metrics["checkpoint_ensemble"])}
    for split, stream in splits.items():  # clips that failed to decode: left out of the metrics, never silently
        missing = dict(gather_object(sorted(stream.missing.items())))
        if missing:
            summary[f"{split}_missing"] = missing

    # The best single model scored both ways: the whole-clip forward above (PSL's evaluation) and the max / mean
    # over chunks of its training length (PSL's inference tool).
    load_weights(model, run.epoch_weights(best_at))
    pool = training_chunking(frontend, cfg.psl, cfg.features.clip_seconds)
    pooled = {p: predict_clips(model, splits[result_split], accelerator, p, pool) for p in ("max", "mean")}
    metrics.update({f"best_chunk_{p}": preds.metrics(names) for p, preds in pooled.items()})
    summary["best_single_chunk_pooled"] = {"chunk_seconds": pool.seconds, **{
        p: results.scalar_metrics(metrics[f"best_chunk_{p}"]) for p in pooled}}
    summary["optimizer_steps"] = results.optimizer_steps(run.steps, accelerator.gradient_accumulation_steps)

    if strong is not None:
        chunking = Chunking.of(frontend, cfg.evaluation.chunk_seconds)
        summary["chunk_seconds"] = chunking.seconds
        stream = splits[result_split]
        for name, m in (("best_single", model),) + ((("teacher", chunker.teacher),) if chunker and chunker.teacher else ()):
            preds = predict_chunks(m, stream, accelerator, strong, chunking)
            if preds is not None:
                summary.setdefault("chunk_level", {})[name] = results.scalar_metrics(preds.metrics(names))

    if accelerator.is_main_process:
        copy_weights(run.epoch_weights(best_at), run.weights("best"))
        save_weights(wa_state, run.weights("wa"))
        best.save(_prediction_path(run, result_split, "best"))
        wa.save(_prediction_path(run, result_split, "wa"))
        ensemble.save(_prediction_path(run, result_split, "ensemble"))
        results.write_result(run.result("best_single"), metrics["best_single"], eval_ids)
        results.write_result(run.result("wa"), metrics["weight_averaged"], eval_ids)
        results.write_result(run.result("ensemble"), metrics["checkpoint_ensemble"], eval_ids)
        for p, preds in pooled.items():
            preds.save(_prediction_path(run, result_split, f"best_chunk_{p}"))
            results.write_result(run.result(f"best_single_chunk_{p}"), metrics[f"best_chunk_{p}"], eval_ids)
        results.write_per_class(run.per_class_ap, metrics["best_single"])
        results.write_summary(run.summary, summary)
        accelerator.print(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary


def _teacher_dirs(cfg: Config) -> list[str]:
    return [str(d) for _, d in teacher_members(cfg.psl.teacher)]


def _prediction_path(run: RunDir, split: str, tag: str) -> Path:
    path = run.predictions(split, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    except Preempted as e:  # a checkpoint is saved: the run can go on with run.resume=true
        print(e, file=sys.stderr)
        sys.exit(e.code)
    except (RunExists, NonFinite, SaveFailed, TooManyCorrupt, DeviceError, PretrainedUnavailable,
            EvalIdsError, CheckpointUnreadable, ResumeMismatch, RemoteError) as e:
        sys.exit(f"error: {e}")
