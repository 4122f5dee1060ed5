"""Export a trained run for use outside this project: ONNX with the front-end inside, weights without pickles,
and a model card.

    python -m trainer.export runs/demo --out export/model.onnx [--weights wa]

Writes beside the ONNX file: ``model.safetensors`` and ``config.json`` (front-end and model settings:
``Tagger.from_export`` loads them), the vocabulary (``class_labels_indices.csv``: the columns of ``probs``)
and ``MODEL_CARD.md``. None of them may exist already.

The ONNX graph takes ``waveform``, float32 [batch, samples] in [-1, 1], mono at 16 kHz (any batch, any
length of at least 400 samples), and gives ``probs`` [batch, classes] and ``embedding`` [batch, channels]: the
tagger's clip probabilities and clip embedding of each row. Inside it: the samples quantised to 16 bits, as the
shards store them; cut into ``clip_seconds`` windows, the last zero-padded; the front-end (window, STFT, mel,
log, normalisation: :meth:`FrontEnd.traceable`); the model; the window mean weighted by the seconds of audio in
each window. Resampling and mixing down stay outside: feed 16 kHz mono.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from trainer.config import ConfigError
from trainer.data.atomic import atomic_write, temp_path
from trainer.data.features import FrontEnd
from trainer.data.manifest import VOCABULARY
from trainer.modelcard import model_card
from trainer.runs import load_run
from trainer.tagger import EXPORT_CONFIG, EXPORT_WEIGHTS

MODEL_CARD = "MODEL_CARD.md"
OPSET = 18


class WaveformTagger(nn.Module):
    """16 kHz waveforms → (clip probabilities, clip embeddings), the tagger's windowing in one traceable graph."""

    def __init__(self, frontend: FrontEnd, model: nn.Module) -> None:
        super().__init__()
        self.frontend = frontend
        self.model = model

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.frontend.clip_samples
        batch, n = waveform.shape
        windows = (n + clip - 1) // clip
        pcm = torch.round(waveform * 32767.0).clamp(-32768.0, 32767.0)  # to_pcm16, as the shards hold them
        pcm = F.pad(pcm, (0, windows * clip - n)).reshape(batch * windows, clip)
        seconds = (n - torch.arange(windows, device=waveform.device) * clip).clamp(max=clip).float()
        frames = self.model.embed(self.frontend.traceable(pcm, seconds.repeat(batch)))
        probs, _ = self.model.head(frames)
        weight = (seconds / seconds.sum()).view(1, windows, 1)
        return ((probs.view(batch, windows, -1) * weight).sum(dim=1),
                (frames.mean(dim=2).view(batch, windows, -1) * weight).sum(dim=1))


def export_onnx(module: WaveformTagger, path: Path) -> None:
    """``module`` as ONNX at ``path`` (written under a temporary name first), batch and length dynamic."""
    try:
        import onnxscript  # noqa: F401 - torch's exporter needs it; say which extra brings it
    except ImportError:
        raise ImportError("ONNX export needs the export extra: pip install -e '.[export]' (onnx, onnxscript, "
                          "onnxruntime)") from None
    clip = module.frontend.clip_samples
    example = torch.zeros(2, clip + clip // 2)  # two windows: no size the exporter could take for a constant
    example[:, ::7] = 0.1
    with torch.no_grad():
        module(example)  # fills the front-end's mel block cache outside the trace
    tmp = temp_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals
            torch.onnx.export(module, (example,), str(tmp), input_names=["waveform"],
                              output_names=["probs", "embedding"], opset_version=OPSET, dynamo=True,
                              dynamic_shapes={"waveform": {0: torch.export.Dim("batch"),
                                                           1: torch.export.Dim("samples", min=400)}},
                              external_data=False, verbose=False)  # one file: the weights inside
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export(run_dir: str | Path, out: str | Path, weights: str = "best") -> list[Path]:
    """Write ``out`` (the ONNX file) and beside it the weights, config, vocabulary and model card of
    ``run_dir``'s ``models/{weights}.pt``; FileExistsError, writing nothing, when any of them exists."""
    run_dir, out = Path(run_dir), Path(out)
    paths = [out] + [out.parent / name for name in (EXPORT_WEIGHTS, EXPORT_CONFIG, VOCABULARY, MODEL_CARD)]
    for p in paths:
        if p.exists():
            raise FileExistsError(f"{p}: exists; export never overwrites (choose another --out)")
    run = load_run(run_dir, weights, torch.device("cpu"))
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(WaveformTagger(run.frontend, run.model), out)  # first: the step that can fail (a missing extra)
    state = {k: v.contiguous() for k, v in run.model.state_dict().items()}
    safetensors.torch.save_file(state, str(temp_path(paths[1])), metadata={"format": "pt"})
    os.replace(temp_path(paths[1]), paths[1])
    settings = {"features": dataclasses.asdict(run.config.features),
                "model": dataclasses.asdict(dataclasses.replace(run.config.model, init=None, pretrained=None,
                                                                pretrained_file=None)),
                "run": run.config.run.name, "weights": weights}
    with atomic_write(paths[2]) as f:
        f.write(json.dumps(settings, indent=1) + "\n")
    run.vocab.save(paths[3])
    with atomic_write(paths[4]) as f:
        f.write(model_card(run_dir, run.config, run.vocab, weights, sum(p.numel() for p in run.model.parameters()),
                           out.name))
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a finished run directory (config.yaml, models/)")
    p.add_argument("--out", required=True, help="the ONNX file to write; the other files go beside it")
    p.add_argument("--weights", choices=("best", "wa"), default="best",
                   help="best single epoch or the weight-averaged model (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        paths = export(args.run, args.out, args.weights)
    except (ConfigError, OSError, ValueError, ImportError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
