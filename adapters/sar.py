"""`sar`: sharpness-aware and reliable entropy minimisation, with model recovery.

Niu et al., "Towards Stable Test-Time Adaptation in Dynamic Wild World" (ICLR 2023),
mr-eggplant/SAR `sar.py` + `sam.py` (SAM from davda54/sam, rho 0.05, not adaptive). Per batch:
1. forward; keep samples with H_i < E0 = 0.4 ln K; loss1 = their mean entropy; backward;
2. SAM ascent: theta <- theta + rho g / (||g|| + 1e-12);
3. forward at the perturbed weights; of the samples kept in 1, keep those still below E0;
   loss2 = their mean entropy; backward;
4. restore theta and take the SGD step (lr 2.5e-4, momentum 0.9) with the perturbed gradient;
5. recovery: ema <- 0.9 ema + 0.1 loss2 (the first value initialises it); if ema < e_m = 0.2
   (hard-coded in the reference), reset weights and optimiser to the source state.
The reference then writes the sub-threshold ema back after its reset (`self.ema = ema` follows
`self.reset()` in `SAR.forward`), so the ema is not cleared; we keep that behaviour. Unlike the
references, the recovery also clears SGD's momentum: see `SAR._recover`.

Adapted: the affine parameters of BatchNorm, LayerNorm and GroupNorm, except the top block the
reference leaves alone (module names containing `layer4`, `blocks.9`-`blocks.11`, or the final
`norm`); the embedded CIFAR ResNet-20 has no such block, so all its BN layers adapt. BN uses
test-batch statistics. The served prediction is the first forward's output.

Where every sample is filtered (in pass 1, or in pass 2) there is no backward and no SGD step:
the reference instead backpropagates a NaN mean, which yields zero gradients and a
momentum-only step. The recovery check needs `loss2` on the host: one sync per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .base import ADAPTERS, Adapter, StepResult, entropy, grad_norm, no_update, use_batch_statistics

NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def sar_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Norm-layer affine parameters outside the top block, by the reference's `collect_params` rule."""
    out = []
    for name, module in model.named_modules():
        if any(part in name for part in ("layer4", "blocks.9", "blocks.10", "blocks.11", "norm.")) or name == "norm":
            continue
        if isinstance(module, NORM_LAYERS):
            for param_name in ("weight", "bias"):
                param = getattr(module, param_name, None)
                if isinstance(param, nn.Parameter):
                    out.append((f"{name}.{param_name}" if name else param_name, param))
    return out


@ADAPTERS.register("sar", description="Sharpness-aware, reliable entropy minimisation with model recovery "
                                 "(Niu et al., ICLR 2023)")
class SAR(Adapter):
    def __init__(self, model: nn.Module, lr: float = 2.5e-4, momentum: float = 0.9, nesterov: bool = False,
                 reset_every: int | None = None, e_margin_scale: float = 0.4, rho: float = 0.05,
                 reset_constant_em: float = 0.2) -> None:
        self.e_margin_scale, self.rho, self.reset_constant_em = e_margin_scale, rho, reset_constant_em
        self.ema: float | None = None
        super().__init__(model, lr, momentum, nesterov, reset_every)

    def configure_model(self, model: nn.Module) -> nn.Module:
        model.train().requires_grad_(False)
        use_batch_statistics(model)
        for _, param in sar_parameters(model):
            param.requires_grad_(True)
        return model

    def adapted_parameters(self, model: nn.Module):
        return sar_parameters(model)

    def forward_and_adapt(self, images: torch.Tensor) -> StepResult:
        logits = self.model(images)
        entropies = entropy(logits)
        e_margin = self.e_margin_scale * math.log(logits.shape[1])
        keep = entropies < e_margin
        mean_entropy = entropies.detach().mean()
        if int(keep.sum()) == 0:
            return no_update(logits, keep.sum(), mean_entropy)
        self.optimizer.zero_grad(set_to_none=True)
        entropies[keep].mean().backward()
        params = list(self.params.values())
        origin = self._ascend(params)

        second = entropy(self.model(images))[keep]
        keep2 = second < e_margin
        used = keep2.sum()
        if int(used) == 0:
            self._restore(params, origin)
            self.optimizer.zero_grad(set_to_none=True)
            return no_update(logits, used, mean_entropy)
        loss2 = second[keep2].mean()
        value = float(loss2.detach())
        self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value
        self.optimizer.zero_grad(set_to_none=True)
        loss2.backward()
        norm = grad_norm(params)
        self._restore(params, origin)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema < self.reset_constant_em:
            self._recover()
        return StepResult(logits.detach(), mean_entropy, used, loss2.detach(), norm,
                          torch.zeros((), dtype=torch.bool, device=logits.device))

    def _recover(self) -> None:
        """Model recovery: weights, optimiser state (SGD momentum included) back to the source state.

        The ema survives, as in the reference. The momentum does not, and there we differ from
        both references, mr-eggplant/SAR and mariodoebler/test-time-adaptation: they save and
        reload the state of their SAM wrapper (davda54/sam), whose `state_dict` holds only SAM's
        own per-parameter state, not that of the SGD it wraps, so the momentum buffers outlive
        the reset and keep pushing the restored source weights along the trajectory that
        triggered the recovery. We take that as a side effect of the wrapper, not a design
        choice (the paper recovers by resetting the model to its original weights), and keep
        weights and optimiser after any reset, whether SAR's own rule, a detector or
        `reset_every` asks for it, at the source state, bitwise.
        """
        ema = self.ema
        self.reset()
        self.ema = ema

    @torch.no_grad()
    def _ascend(self, params: list[nn.Parameter]) -> list[torch.Tensor]:
        """SAM's first step: move to theta + rho g/||g||; returns the original values."""
        scale = self.rho / (grad_norm(params) + 1e-12)
        origin = [p.detach().clone() for p in params]
        for p in params:
            if p.grad is not None:
                p.add_(p.grad * scale)
        return origin

    @staticmethod
    @torch.no_grad()
    def _restore(params: list[nn.Parameter], origin: list[torch.Tensor]) -> None:
        for p, value in zip(params, origin):
            p.copy_(value)

    def extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.ema = state["ema"]

