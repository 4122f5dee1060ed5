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
from pathlib import Path

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm import tqdm

from trainer import results
from trainer.averaging import average_state_dicts
from trainer.checkpointing import CheckpointUnreadable, SaveFailed, copy_weights, find_checkpoints, load_checkpoint, \
    save_checkpoint, save_weights, weights_path
from trainer.config import Config, ConfigError, load_config, missing_paths
from trainer.cpu_tuning import configure_cpu
from trainer.devices import DeviceError, resolve_device
from trainer.data.chunks import Chunking
from trainer.data.corrupt import CORRUPT_SAMPLES, CorruptLog, TooManyCorrupt, seal
from trainer.data.datasets import SplitError, Splits, resolve_splits
from trainer.data.eval_ids import MISSING_IDS, EvalIdsError, EvalSelection
from trainer.data.features import FrontEnd, build_frontend
from trainer.data.manifest import VOCABULARY, Vocabulary
from trainer.data.remote import RemoteError, is_url
from trainer.data.seeding import STEP, torch_seed
from trainer.data.streams import EvalStream, TrainStream, check_gpu_frontend
from trainer.data.strong_labels import load_strong_labels
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
    try:
        batch_size, accumulation = cfg.data.batch_plan(world)
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None
    if cfg.data.global_batch_size is None:
        accumulation = cfg.optim.grad_accum
    lines = [f"{path}: valid", f"{world} process{'es' if world > 1 else ''}: {_plan(batch_size, world, accumulation)}"]
    missing = missing_paths(cfg)
    lines += [f"note: {m}" for m in missing]
    urls = [spec for split in (cfg.data.train, cfg.data.valid, cfg.data.eval) for spec in split if is_url(spec)]
    if urls:  # --check reads nothing over the network
        lines.append(f"note: {len(urls)} dataset(s) at a URL, reached when the run starts: {', '.join(urls)}")
    if not missing and not urls:
        try:
            data = resolve_splits(cfg.data)
        except SplitError as e:
            raise ConfigError(str(e)) from None
        cfg.features = data.feature_config(cfg.features)
        lines.append(f"data: {len(data.train)} train, {len(data.valid)} valid, {len(data.eval)} eval clips; "
                     f"{len(data.vocab)} classes")
        lines += [f"warning: {w}" for w in data.warnings]
    lines += [f"run directory: {cfg.run_dir}", "resolved config:", yaml.safe_dump(cfg.to_dict(), sort_keys=False)]
    if int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(lines), flush=True)
    return cfg


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.check:
        return check(args.config, args.overrides).to_dict()
    cfg = load_config(args.config, args.overrides)
    try:  # before any work: an empty split or a dataset listed twice stops here, not at the first evaluation
        data = resolve_splits(cfg.data)
    except SplitError as e:
        raise ConfigError(str(e)) from None
    device = resolve_device(cfg.train.device)
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "no"
    accelerator = Accelerator(
        cpu=device == "cpu",
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.optim.grad_accum,
        step_scheduler_with_optimizer=False,  # the schedule counts optimizer steps, whatever the world size
        log_with=cfg.train.trackers or None,
        project_dir=str(cfg.run_dir),
    )
    # Before any work: the main process locks the run directory for the run's life (and with run.overwrite
    # empties it); a refusal (another launch running it, another run's results, a path outside run.dir) stops
    # every rank at once.
    lock = claim_run(accelerator, cfg.run.dir, cfg.run.name, cfg.run.resume, cfg.run.overwrite)
    try:
        return _run(cfg, accelerator, data)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg: Config, accelerator: Accelerator, data: Splits) -> dict:
    """The run in the directory this process has claimed: data, models, resume, epochs, final results."""
    run_dir = cfg.run_dir
    rank, world = accelerator.process_index, accelerator.num_processes
    try:  # the recipe's global batch, whatever the number of processes
        batch_size, accumulation = cfg.data.batch_plan(world)
    except ValueError as e:
        raise ConfigError(f"data.{e}") from None
    if cfg.data.global_batch_size is not None:
        accelerator.gradient_accumulation_steps = accumulation
    if accelerator.device.type == "cpu":
        configure_cpu(int(os.environ.get("LOCAL_WORLD_SIZE", world)), cfg.train.cpu_threads)
    log = accelerator.print
    log(f"{world} process{'es' if world > 1 else ''} on {accelerator.device}: "
        f"{_plan(batch_size, world, accelerator.gradient_accumulation_steps)}")
    checkpoints = find_checkpoints(cfg.run.resume, run_dir, log)  # newest first; unreadable ones named and left out
    checkpoint = checkpoints[0][0] if checkpoints else None
    if checkpoint is not None:  # a resumed run repeats the interrupted one: it keeps that run's seed
        seed = checkpoints[0][1]["seed"]
        if seed != cfg.run.seed:
            log(f"warning: run.seed {cfg.run.seed} differs from the checkpoint's seed {seed}; resuming with {seed}")
            cfg.run.seed = seed
    set_seed(cfg.run.seed)

    # ---- 1. Data -------------------------------------------------------------------------------
    for warning in data.warnings:
        log(f"warning: {warning}")
    vocab = data.vocab
    cfg.features = data.feature_config(cfg.features)  # normalisation stats from dataset.json where unset
    frontend = build_frontend(cfg.features)
    if accelerator.device.type == "cuda":
        # DALI's GPU ops load, or one error says what is missing
        log(f"GPU front-end: {check_gpu_frontend(frontend, accelerator.device)}")
        torch.backends.cudnn.benchmark = True  # fixed input shapes
    run_facts = fingerprint(cfg.to_dict(), data)  # recorded with every checkpoint, checked on resume
    if checkpoint is not None:  # before anything is written: a refused resume leaves the run as it was
        allowed = check_resume(checkpoints[0][1].get("fingerprint"), run_facts, cfg.run.allow_changed, checkpoint)
    if accelerator.is_main_process:
        seal(run_dir / CORRUPT_SAMPLES)  # a row torn by a crash must not swallow the next one appended
        cfg.save(run_dir / "config.yaml")  # resolved: predict and PSL teachers rebuild the same features from it
        vocab.save(run_dir / VOCABULARY)
        if data.eval_ids:
            data.eval_ids.write_missing(run_dir / MISSING_IDS)
        accelerator.init_trackers(cfg.run.name, config=flat(cfg.to_dict()))
    accelerator.wait_for_everyone()
    where = dict(rank=rank, world_size=world, device=accelerator.device)
    corrupt = CorruptLog(run_dir / CORRUPT_SAMPLES, len(data.train), cfg.data.max_corrupt_fraction) \
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
    result_split = "eval" if "eval" in splits else "valid"
    strong = load_strong_labels(cfg.evaluation.strong_labels, vocab) if cfg.evaluation.strong_labels else None
    steps_per_epoch = min(len(train), cfg.train.steps_per_epoch or len(train))
    optimizer_steps = math.ceil(steps_per_epoch / accelerator.gradient_accumulation_steps)
    log(f"data: {len(data.train)} train, {len(data.valid)} valid, {len(data.eval)} eval clips; "
        f"{len(vocab)} classes; {steps_per_epoch} steps/epoch on each of {world} processes; {train.num_threads} "
        f"DALI threads per process (data.num_threads: {cfg.data.num_threads})")
    if data.eval_ids:
        log(f"data.eval_ids: {data.eval_ids}")

    # ---- 2. Models -----------------------------------------------------------------------------
    # One process downloads any ImageNet weights, the others read its cache; a resumed checkpoint has every weight.
    with accelerator.main_process_first():
        model = build_model(cfg.model, len(vocab), load_pretrained=checkpoint is None)
    if cfg.model.init:
        load_weights(model, weights_path(cfg.model.init))
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    chunker = None
    if cfg.psl.chunk_seconds is not None:
        teacher = build_teacher(cfg.psl.teacher, cfg.features, vocab, accelerator.device, cfg.train.channels_last,
                                cfg.train.compile) if cfg.psl.teacher else None
        oracle = ChunkOracle(load_strong_labels(cfg.psl.oracle, vocab), len(vocab)) if cfg.psl.oracle else None
        chunker = ChunkedTeacherStudent(teacher, Chunking.of(frontend, cfg.psl.chunk_seconds, cfg.psl.chunk_hop),
                                        cfg.psl.chunks_per_clip, cfg.psl.threshold if cfg.psl.targets == "hard" else None,
                                        oracle)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, optimizer_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if cfg.train.compile:
        model = torch.compile(model)
    log(f"model: {cfg.model.name}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters"
        + (f", from {cfg.model.pretrained} weights" if cfg.model.pretrained and checkpoint is None else "")
        + (f"; teacher from {' + '.join(_teacher_dirs(cfg))}, alpha {cfg.psl.alpha}" if cfg.psl.teacher else ""))

    # ---- 3. Resume -----------------------------------------------------------------------------
    progress = {"epoch": 0, "step": 0, "global_step": 0}
    if checkpoint is not None:
        loaded, progress = load_checkpoint(accelerator, checkpoints, log)
        if loaded != checkpoint:  # an older one: check it too
            checkpoint = loaded
            allowed = check_resume(progress.get("fingerprint"), run_facts, cfg.run.allow_changed, checkpoint)
        for note in allowed:
            log(f"warning: {note}")
        log(f"resumed from {checkpoint}: epoch {progress['epoch'] + 1}, step {progress['step']}")
    steplog, preemption = StepLog(), Preemption()  # from here a signal is recorded, so no rewrite below is torn
    if accelerator.is_main_process:
        results.truncate_rows(run_dir / "metrics.csv", progress["epoch"])
        results.truncate_rows(run_dir / "steps.csv", progress["global_step"])
    accelerator.wait_for_everyone()
    select = f"{cfg.evaluation.select_on}_mAP"
    schedule = EvalSchedule(cfg.train.eval_every, cfg.optim.epochs, cfg.train.early_stop_patience,
                            results.evaluated(results.read_rows(run_dir / "metrics.csv"), select))

    # ---- 4. Train ------------------------------------------------------------------------------
    global_step = progress["global_step"]

    def progress_at(epoch: int, step: int) -> dict:
        return {"epoch": epoch, "step": step, "global_step": global_step, "seed": cfg.run.seed,
                "stream": train.state_dict(), "fingerprint": run_facts}

    durable = (run_dir / "metrics.csv", run_dir / "steps.csv")  # the rows a checkpoint's progress counts
    for epoch in range(progress["epoch"], cfg.optim.epochs):
        if schedule.stalled(epoch):
            best = best_epoch(schedule.history)
            log(f"early stop: {select} has not improved for {cfg.train.early_stop_patience} epochs "
                f"(best {schedule.history[best]:.4f} in epoch {best})")
            break
        model.train()
        train.set_epoch(epoch)
        if progress["epoch"] == epoch and progress["step"]:
            train.load_state_dict(progress["stream"])
        first = progress["step"] if progress["epoch"] == epoch else 0
        losses, clips, started = [], 0, time.perf_counter()
        bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.optim.epochs}",
                   disable=not accelerator.is_local_main_process, dynamic_ncols=True)
        for step, batch in enumerate(train, start=first):
            if step >= steps_per_epoch:
                break
            torch.manual_seed(torch_seed(cfg.run.seed, STEP, epoch, step, rank))  # dropout, chunk picks: resumable
            with accelerator.accumulate(model):
                loss = training_loss(model, chunker, batch, cfg.psl.alpha, accelerator.autocast)
                if cfg.train.on_nonfinite == "skip_step" and _nonfinite_anywhere(loss, accelerator):
                    log(f"warning: non-finite loss at epoch {epoch + 1}, step {step + 1}: step skipped")
                else:
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.optim.grad_clip:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                    optimizer.step()
                    if accelerator.sync_gradients:
                        scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            global_step += 1
            steplog.add(loss, batch["keys"], epoch, step, global_step, optimizer.param_groups[0]["lr"])
            clips += len(batch["keys"]) * world
            bar.update(1)
            last = step + 1 == steps_per_epoch
            save = cfg.train.save_every_steps and global_step % cfg.train.save_every_steps == 0 and not last
            if last or save or global_step % cfg.train.log_every == 0:  # the losses reach the host here only
                flush = steplog.flush(accelerator, preemption.signal is not None)
                losses += _record(flush, cfg.train.on_nonfinite, accelerator, run_dir,
                                  clips / (time.perf_counter() - started))
                bar.set_postfix(loss=f"{losses[-1]:.4f}" if losses else "-")
                if flush.stop and not last:  # preempted mid-epoch: save where the ranks are, then stop
                    raise preemption.stop(f"at epoch {epoch + 1}, step {step + 1}", save_checkpoint(
                        accelerator, model, run_dir, global_step, progress_at(epoch, step + 1), durable))
            if save:
                save_checkpoint(accelerator, model, run_dir, global_step, progress_at(epoch, step + 1), durable)
            if cfg.train.stop_after_steps and global_step >= cfg.train.stop_after_steps:
                log(f"stopping abruptly after step {global_step} (train.stop_after_steps)")
                return {}
        bar.close()
        elapsed = time.perf_counter() - started
        epoch_row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                     "lr": optimizer.param_groups[0]["lr"], "clips_per_s": clips / elapsed}
        if chunker is not None and chunker.teacher is not None:  # the teacher's cost, shown separately
            epoch_row["clips_per_s_without_teacher"] = clips / max(elapsed - chunker.teacher_seconds(), 1e-9)

        # Evaluate this epoch's weights on every split when due; keep predictions for selection and ensembles.
        # An epoch not evaluated has empty evaluation cells in metrics.csv (every row has the same columns).
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        due = schedule.due(epoch + 1)
        for split, stream in splits.items():
            m = {}
            if due:
                preds = predict_clips(unwrapped, stream, accelerator)
                m = preds.metrics(list(vocab.names))
                if accelerator.is_main_process:
                    preds.save(_prediction_path(run_dir, split, f"epoch_{epoch + 1}"))
            epoch_row.update({f"{split}_{k}": m.get(k) for k in ("mAP", "mAUC", "dprime")})
        if due:
            schedule.record(epoch + 1, epoch_row[select])
        shown = {k: v for k, v in epoch_row.items() if v is not None}
        log("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()))
        if accelerator.is_main_process:
            results.append_row(run_dir / "metrics.csv", epoch_row)
            results.plot_curves(run_dir / "metrics.csv", run_dir / "curves.png")
            accelerator.log({f"epoch/{k}": v for k, v in shown.items()}, step=global_step)
            save_weights(unwrapped.state_dict(), run_dir / "models" / f"epoch_{epoch + 1}.pt")
        saved = save_checkpoint(accelerator, model, run_dir, global_step, progress_at(epoch + 1, 0), durable)
        if preemption.agreed(accelerator):  # a signal during the epoch's last steps or its evaluation
            raise preemption.stop(f"after epoch {epoch + 1}", saved)
    preemption.restore()

    # ---- 5. Best single model, weight averaging, checkpoint ensemble ---------------------------
    summary = finish(cfg, accelerator, accelerator.unwrap_model(model, keep_torch_compile=False), splits, result_split,
                     data.eval_ids, vocab, strong, chunker, frontend)
    accelerator.end_training()
    return summary


def _nonfinite_anywhere(loss: torch.Tensor, accelerator: Accelerator) -> bool:
    """Whether the loss is non-finite on any rank: all skip the step together (a host sync every step)."""
    return bool(accelerator.reduce((~torch.isfinite(loss.detach())).float(), "sum").item() > 0)


def _record(flush: Flush, on_nonfinite: str, accelerator: Accelerator, run_dir: Path, rate: float) -> list[float]:
    """Write a flush's steps.csv rows and tracker values; stop at a non-finite loss unless skipping those."""
    rows = flush.rows
    if flush.nonfinite is not None and on_nonfinite == "fail":
        rows = rows[:flush.first_nonfinite]
    if accelerator.is_main_process:
        for row in rows:
            results.append_row(run_dir / "steps.csv", row)
        if rows:
            accelerator.log({"train/loss": float(np.mean([r["loss"] for r in rows])), "train/lr": rows[-1]["lr"],
                             "train/clips_per_s": rate}, step=rows[-1]["global_step"])
    if len(rows) < len(flush.rows):
        raise flush.nonfinite
    return [r["loss"] for r in rows]


def finish(cfg: Config, accelerator: Accelerator, model: torch.nn.Module, splits: dict, result_split: str,
           eval_ids: EvalSelection | None, vocab: Vocabulary, strong, chunker: ChunkedTeacherStudent | None,
           frontend: FrontEnd) -> dict:
    run_dir = cfg.run_dir
    names = list(vocab.names)
    rows = results.read_rows(run_dir / "metrics.csv")
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
    members = [Predictions.load(_prediction_path(run_dir, result_split, f"epoch_{e}")) for e in evaluated]
    best = members[evaluated.index(best_at)]

    wa_end = cfg.train.wa_end or cfg.optim.epochs
    # a run stopped early before wa_start averages its last epoch alone; "epochs" says which were averaged
    wa_epochs = [e for e in epochs if cfg.train.wa_start <= e <= wa_end] or epochs[-1:]
    wa_state = average_state_dicts([run_dir / "models" / f"epoch_{e}.pt" for e in wa_epochs])
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
    load_weights(model, run_dir / "models" / f"epoch_{best_at}.pt")
    pool = training_chunking(frontend, cfg.psl, cfg.features.clip_seconds)
    pooled = {p: predict_clips(model, splits[result_split], accelerator, p, pool) for p in ("max", "mean")}
    metrics.update({f"best_chunk_{p}": preds.metrics(names) for p, preds in pooled.items()})
    summary["best_single_chunk_pooled"] = {"chunk_seconds": pool.seconds, **{
        p: results.scalar_metrics(metrics[f"best_chunk_{p}"]) for p in pooled}}
    summary["optimizer_steps"] = results.optimizer_steps(run_dir / "steps.csv", accelerator.gradient_accumulation_steps)

    if strong is not None:
        chunking = Chunking.of(frontend, cfg.evaluation.chunk_seconds)
        summary["chunk_seconds"] = chunking.seconds
        stream = splits[result_split]
        for name, m in (("best_single", model),) + ((("teacher", chunker.teacher),) if chunker and chunker.teacher else ()):
            preds = predict_chunks(m, stream, accelerator, strong, chunking)
            if preds is not None:
                summary.setdefault("chunk_level", {})[name] = results.scalar_metrics(preds.metrics(names))

    if accelerator.is_main_process:
        models = run_dir / "models"
        copy_weights(models / f"epoch_{best_at}.pt", models / "best.pt")
        save_weights(wa_state, models / "wa.pt")
        best.save(_prediction_path(run_dir, result_split, "best"))
        wa.save(_prediction_path(run_dir, result_split, "wa"))
        ensemble.save(_prediction_path(run_dir, result_split, "ensemble"))
        results.write_result(run_dir / "best_single_result.csv", metrics["best_single"], eval_ids)
        results.write_result(run_dir / "wa_result.csv", metrics["weight_averaged"], eval_ids)
        results.write_result(run_dir / "ensemble_result.csv", metrics["checkpoint_ensemble"], eval_ids)
        for p, preds in pooled.items():
            preds.save(_prediction_path(run_dir, result_split, f"best_chunk_{p}"))
            results.write_result(run_dir / f"best_single_chunk_{p}_result.csv", metrics[f"best_chunk_{p}"], eval_ids)
        results.write_per_class(run_dir / "best_single_per_class_ap.csv", metrics["best_single"])
        results.write_summary(run_dir / "summary.json", summary)
        accelerator.print(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    return summary


def _teacher_dirs(cfg: Config) -> list[str]:
    return [str(d) for _, d in teacher_members(cfg.psl.teacher)]


def _prediction_path(run_dir: Path, split: str, tag: str) -> Path:
    path = run_dir / "predictions" / f"{split}_{tag}.npz"
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
