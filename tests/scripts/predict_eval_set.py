"""Predict the eval set with a fixed, seeded model on however many processes it is launched with, and
save the gathered predictions (tests compare 1 and 2 processes)."""
import sys

import torch
from accelerate import Accelerator

from trainer.config import load_config
from trainer.data.datasets import resolve_splits
from trainer.data.features import build_frontend
from trainer.data.streams import EvalStream
from trainer.evaluate import predict_clips
from trainer.models import build_model
from trainer.models.settings import ModelConfig

config, out = sys.argv[1], sys.argv[2]
cfg = load_config(config)
accelerator = Accelerator(cpu=True)
data = resolve_splits(cfg.data)
torch.manual_seed(0)
model = build_model(ModelConfig(name="mobilenetv2", width_mult=0.35), len(data.vocab))
stream = EvalStream(data.eval, len(data.vocab), cfg.data.loader(cfg.evaluation.batch_size),
                    build_frontend(data.feature_config(cfg.features)), accelerator.process_index,
                    accelerator.num_processes, accelerator.device)
preds = predict_clips(model, stream, accelerator)
if accelerator.is_main_process:
    preds.save(out)
