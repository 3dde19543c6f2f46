"""What a training step minimises: an objective is called with a batch and returns the loss; the loop
calls every objective the same way (``loss = objective(batch)``) and takes the step. The batch carries
all an objective needs (self-critical training's reward rows included: ``Batch.rows``).

- :class:`CrossEntropy`: the paper's per-caption NLL of the reference words (``--objective xe``);
- :class:`s2vt.training.scst.SCSTLoss`: self-critical sequence training on CIDEr-D (``--objective scst``).
"""
from __future__ import annotations

import torch
from torch import nn


class CrossEntropy:
    """The model's own loss on the batch's reference captions. ``net``: the model, or its
    DistributedDataParallel wrapper (whose forward synchronises the gradients)."""

    def __init__(self, net: nn.Module):
        self.net = net

    def __call__(self, batch) -> torch.Tensor:
        _, loss = self.net(batch.feats, batch.feat_lens, batch.words_in, batch.targets, batch.word_lens,
                           batch.device_lens)
        return loss
