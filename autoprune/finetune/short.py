"""A short fine-tune as an Evaluator recovery: K steps of SGD that distil the dense network's outputs.

NetAdapt ranks its candidates after a short fine-tune. Here the steps run on the Evaluator's
BatchNorm-calibration batches (training images), with the dense network's soft predictions as
targets (Hinton's distillation loss), so no labels or extra data are needed; BatchNorm statistics
are recalibrated before and after. Every candidate is fine-tuned from the dense weights, so a policy
still rebuilds the same network.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from autoprune.core.proxy import recalibrate_batchnorm
from autoprune.errors import ConfigError
from autoprune.finetune.trainer import distillation_loss


class ShortFinetune:
    """``steps`` SGD steps of distillation on fixed training batches, usable as ``Evaluator.recovery``.

    Args:
        dense: the dense network (copied; the teacher).
        batches: training batches, already on the device the Evaluator scores on.
        steps: SGD steps (cycling over the batches).
        lr: learning rate.
        momentum: SGD momentum.
        temperature: distillation temperature.

    Raises:
        ConfigError: for fewer than one step, no batches, or a learning rate that is not positive.
    """

    def __init__(self, dense: nn.Module, batches: list[torch.Tensor], steps: int, lr: float = 0.01,
                 momentum: float = 0.9, temperature: float = 4.0) -> None:
        if steps < 1 or not lr > 0:
            raise ConfigError(f"a short fine-tune needs steps >= 1 and lr > 0, got steps={steps}, lr={lr}")
        if not batches:
            raise ConfigError("a short fine-tune needs training batches; the proxy has no calibration batches "
                              "(calibration_batches: 0)")
        self.batches, self.steps, self.lr, self.momentum, self.temperature = batches, steps, lr, momentum, temperature
        teacher = copy.deepcopy(dense).to(batches[0].device).eval()
        with torch.no_grad():
            self.targets = [teacher(x) for x in batches]

    def __call__(self, network: nn.Module, kept: Mapping[str, int]) -> None:
        """Fine-tune ``network`` in place, then recalibrate its BatchNorm statistics (leaves it in eval mode)."""
        recalibrate_batchnorm(network, self.batches)
        optimizer = torch.optim.SGD(network.parameters(), lr=self.lr, momentum=self.momentum)
        network.train()
        with torch.enable_grad():
            for step in range(self.steps):
                i = step % len(self.batches)
                loss = distillation_loss(network(self.batches[i]), self.targets[i], self.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        recalibrate_batchnorm(network, self.batches)
