"""A finished run's model card (MODEL_CARD.md): what it was trained on and how, its results, its classes and
what it is for, from the run's resolved config, summary.json and its training datasets' dataset.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainer.config import Config
from trainer.data.datasets import split_local_spec
from trainer.data.features import KaldiFbank, build_frontend
from trainer.data.manifest import DATASET_INFO, VOCABULARY, Vocabulary
from trainer.rundir import RunDir
from trainer.settings import teacher_members

_SECTIONS = (("best_single", "best single epoch"), ("weight_averaged", "weight-averaged"),
             ("checkpoint_ensemble", "checkpoint ensemble"))


def model_card(run_dir: str | Path, cfg: Config, vocab: Vocabulary, weights: str, num_params: int,
               onnx_name: str) -> str:
    """The card of ``run_dir``'s ``weights`` (best or wa) as Markdown."""
    run_dir = Path(run_dir)
    summary_path = RunDir(run_dir).summary
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    frontend = build_frontend(cfg.features)
    m = cfg.model
    arch = f"{m.name} (width ×{m.width_mult})" if m.name == "mobilenetv2" else \
        f"{m.name} ({m.att_heads} attention heads)" if m.att_heads else f"{m.name} (mean pooling)"
    chosen = {"best": f"the best single epoch ({summary.get('best_epoch', '?')}, selected on "
                      f"{summary.get('selected_on', cfg.evaluation.select_on)} mAP)",
              "wa": "the weight average of epochs "
                    + "–".join(map(str, summary.get("weight_averaged", {}).get("epochs", ["?"])))}[weights]
    norm = f", normalised by mean {frontend.norm_mean:g} and std {frontend.norm_std:g}" \
        if isinstance(frontend, KaldiFbank) else ", in dB (top 120 dB), not normalised"
    lines = [
        f"# Model card: {cfg.run.name}",
        "",
        "## Model",
        f"- Audio tagger: {arch}, {num_params / 1e6:.2f} M parameters, {len(vocab)} classes (multi-label, "
        "sigmoid probabilities).",
        f"- Weights: {chosen}, from `{run_dir.name}`.",
        f"- Input: mono 16 kHz audio in {cfg.features.clip_seconds:g} s windows; front-end `{frontend.name}` "
        f"({frontend.num_mels} mel bins, {frontend.frames_per_second} frames/s{norm}).",
        f"- Files: `{onnx_name}` (ONNX: waveform → probs, embedding; front-end inside), `model.safetensors` + "
        f"`config.json` (`trainer.tagger.Tagger.from_export`), `{VOCABULARY}` (the classes, in output order).",
        "",
        "## Training data",
        *_datasets(cfg),
        f"- Labels: {_label_source(cfg)}.",
        f"- Validation: {', '.join(cfg.data.valid) if cfg.data.valid else f'a {cfg.data.valid_fraction:g} hold-out of the training clips by key hash'}.",
        "",
        "## Recipe",
        f"- {summary.get('epochs_trained', cfg.optim.epochs)} epochs"
        f"{' (stopped early)' if summary.get('stopped_early') else ''}, Adam lr {cfg.optim.lr:g}, "
        f"{'balanced (weighted) sampling' if cfg.data.weighted else 'uniform sampling'}, batch "
        f"{cfg.data.global_batch_size or cfg.data.batch_size or 32} clips"
        f"{'' if cfg.data.global_batch_size else ' per process'}, seed {cfg.run.seed}.",
        f"- Augmentation: {_augment(cfg)}.",
        f"- Pretrained start: {cfg.model.pretrained or ('run ' + Path(cfg.model.init).name if cfg.model.init else 'none')}.",
        "",
        "## Results",
        *_results(summary),
        "",
        "## Vocabulary",
        f"{len(vocab)} classes (digest {vocab.digest()}), in `{VOCABULARY}`: "
        + "; ".join(vocab.names[:30]) + (f"; … ({len(vocab) - 30} more)" if len(vocab) > 30 else "") + ".",
        "",
        "## Intended use and limits",
        "- Tagging which of the classes above sound in a recording, for search, indexing and analysis, and its "
        "embeddings as features for other audio tasks. The probabilities are per class and not calibrated: pick "
        "thresholds per class on data like yours.",
        "- It knows only these classes and the recordings it was trained on; expect lower accuracy on other "
        "domains, microphones, languages and recording conditions than the results above, and check it there.",
        f"- Long recordings are tagged in {cfg.features.clip_seconds:g} s windows; the timeline's chunks are "
        "coarse, not event boundaries.",
        "- Not for identifying people (speaker or voice identification) or for decisions about individuals.",
        "",
    ]
    return "\n".join(lines)


def _datasets(cfg: Config) -> list[str]:
    out = []
    for spec in cfg.data.train:
        root, selected = split_local_spec(spec)
        info_path = root / DATASET_INFO
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        what = f"{info['num_written']} clips, {info.get('total_hours', 0):.3g} h" if "num_written" in info \
            else "clip count unknown (its dataset.json is not at hand)"
        part = f", {len(selected)} of its shards" if selected else ""
        out.append(f"- Dataset `{info.get('name', root.name)}`{part}: {what}.")
    return out


def _label_source(cfg: Config) -> str:
    weak = "the clips' weak (clip-level) labels from the dataset manifest"
    enhanced = []
    for spec in cfg.data.train:
        info_path = split_local_spec(spec)[0] / DATASET_INFO
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        enhanced += [", ".join(step.get("steps", [])) for step in info.get("enhancements", [])]
    if enhanced:
        weak += f", with labels added by tools.enhance_labels ({'; '.join(enhanced)})"
    if cfg.psl.oracle:
        return f"chunk labels from strong annotations ({Path(cfg.psl.oracle).name}), α = {cfg.psl.alpha:g} with {weak}"
    if cfg.psl.teacher:
        teachers = ", ".join(d.name for _, d in teacher_members(cfg.psl.teacher))
        chunks = f"{cfg.psl.chunk_seconds:g} s chunks" if cfg.psl.chunk_seconds else "whole clips"
        return (f"pseudo-strong labels ({cfg.psl.targets}) of {chunks} from the teacher {teachers}, "
                f"α = {cfg.psl.alpha:g} with {weak}")
    return weak


def _augment(cfg: Config) -> str:
    a = cfg.augment
    parts = [f"SpecAugment (freq {a.freqm}, time {a.timem})" if a.freqm or a.timem else "",
             f"mixup {a.mixup:g} ({a.mixup_domain})" if a.mixup else "",
             f"batch mixup α {a.batch_mixup_alpha:g}" if a.batch_mixup_alpha else "",
             f"time shift ±{a.time_shift:g} s" if a.time_shift else "", f"gain ±{a.gain_db:g} dB" if a.gain_db else ""]
    return ", ".join(p for p in parts if p) or "none"


def _results(summary: dict[str, Any]) -> list[str]:
    if "best_single" not in summary:
        return ["No summary.json: the run's results are unknown."]
    split = summary.get("result_split", "eval")
    first = summary["best_single"]
    lines = [f"On the `{split}` split: {first['num_samples']} clips, id hash (keys digest) "
             f"`{first['keys_digest']}`" + (f", eval ids {summary['eval_ids']}" if "eval_ids" in summary else "")
             + ".", "", "| model | mAP | mAUC | d′ |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {summary[key]['mAP']:.4f} | {summary[key]['mAUC']:.4f} | {summary[key]['dprime']:.3f} |"
              for key, name in _SECTIONS if key in summary]
    for key, name in (("best_single", "best single epoch"), ("teacher", "PSL teacher")):
        chunk = summary.get("chunk_level", {}).get(key)
        if chunk:
            lines.append(f"| {name}, {summary.get('chunk_seconds', '?'):g} s chunks ({chunk['num_samples']} chunks) "
                         f"| {chunk['mAP']:.4f} | {chunk['mAUC']:.4f} | {chunk['dprime']:.3f} |")
    missing = summary.get(f"{split}_missing")
    if missing:
        lines.append(f"\n{len(missing)} {split} clips did not decode and are not in these results.")
    return lines
