"""Training: the loop, checkpoints that lose nothing, EMA and post-hoc EMA, DDP set-up, resumable data order."""

from lincorrupt.train.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint
from lincorrupt.train.config import TrainConfig
from lincorrupt.train.data_order import StepBatchSampler
from lincorrupt.train.distributed import DistInfo, init_distributed
from lincorrupt.train.ema import EMA, PowerEMA, posthoc_ema
from lincorrupt.train.trainer import Trainer

__all__ = ["CheckpointError", "DistInfo", "EMA", "PowerEMA", "StepBatchSampler", "TrainConfig", "Trainer",
           "find_checkpoint", "init_distributed", "load_checkpoint", "posthoc_ema", "save_checkpoint"]
