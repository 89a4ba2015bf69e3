"""Training: ``train(TrainConfig, callbacks) -> TrainResult``, checkpoints, presets.

    from mathlens.train import TrainConfig, train, preset
    cfg = TrainConfig.from_dict(preset("nanogpt-char-cpu"))
    result = train(cfg)            # writes cfg.run.out_dir: metrics.jsonl, checkpoints/, tokenizer/, config.json
"""

from mathlens.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mathlens.train.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from mathlens.train.fit import FitResult, train_model
from mathlens.train.loop import TrainResult, train
from mathlens.train.optim import lr_at, make_optimizer, param_groups
from mathlens.train.presets import PRESETS, preset
from mathlens.train.rundir import RunLock, read_metrics
from mathlens.train.sampling import load_run, sample_text

__all__ = [
    "Checkpoint", "DataConfig", "FitResult", "OptimConfig", "PRESETS", "RunConfig", "RunLock", "TrainConfig", "TrainResult",
    "load_checkpoint", "load_run", "lr_at", "make_optimizer", "param_groups", "preset", "read_metrics",
    "sample_text", "save_checkpoint", "train", "train_model",
]
