"""The adapter contract: `step(images)` serves predictions and adapts, without labels.

A template method in the style of mariodoebler/test-time-adaptation's `TTAMethod` and the original
Tent code (Wang et al., ICLR 2021): the public `step`, `snapshot`, `reset`, `state_dict` and
`load_state_dict` are fixed here; a method supplies `configure_model`, `adapted_parameters` and
`forward_and_adapt`. Adapters never see labels.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np
import torch
from torch import nn

from stream_monitor.registry import Info, Registry


@dataclass(frozen=True)
class AdapterInfo(Info[type["Adapter"]]):
    """What an adapter needs beyond the source model, declared where it is registered.

    `make_adapter` and the runtimes read these fields, so a new method with the same needs works
    without a branch on its name there.

    Attributes:
        fisher_images: How many of the stream's first images the adapter estimates its Fisher
            information on (0: none). They reach the constructor normalised, as `fisher_images`;
            the stream's own start, because a monitored run has no clean source data.
        input_normalisation: Whether the constructor gets the model's input normalisation as
            `input_mean` / `input_std` (for methods that augment in pixel space).
        adapts: Whether the adapter changes the model at all. One that does not (`source`)
            serves the frozen model's predictions, so its online accuracy is the source accuracy
            and the estimates say so (`estimation.pipeline.derive`).
    """

    fisher_images: int = 0
    input_normalisation: bool = False
    adapts: bool = True

    def __post_init__(self) -> None:
        if not self.description:
            raise ValueError(f"adapter {self.name!r} needs a description (shown by `stream-monitor list adapters`)")
        if self.fisher_images < 0:
            raise ValueError(f"adapter {self.name!r}: fisher_images must be >= 0, got {self.fisher_images}")

    @property
    def cls(self) -> type[Adapter]:
        return self.obj


class AdapterRegistry(Registry[type["Adapter"]]):
    """The adapter registry: entries carry `AdapterInfo`."""

    def __init__(self) -> None:
        super().__init__("adapter", AdapterInfo)

    def info(self, name: str) -> AdapterInfo:
        return cast(AdapterInfo, super().info(name))


ADAPTERS = AdapterRegistry()

# SGD as in the Tent/EATA/SAR/CoTTA references; Adam (beta1 = momentum) as in CoTTA's CIFAR configs.
OPTIMIZERS = {
    "sgd": lambda params, lr, momentum, nesterov: torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov),
    "adam": lambda params, lr, momentum, nesterov: torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999)),
}


@dataclass
class StepResult:
    """What one step served and cheap statistics, kept as tensors so `step` never syncs the host.

    `logits` are the outputs that served the predictions: computed before the update.
    """

    logits: torch.Tensor
    mean_entropy: torch.Tensor
    num_used: torch.Tensor  # samples that entered the loss
    loss: torch.Tensor
    grad_norm: torch.Tensor
    skipped: torch.Tensor  # True when no update was made
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # method-specific scalars

    def stats(self) -> "StepStats":
        """The statistics as Python numbers (one host sync)."""
        values = torch.stack([self.mean_entropy, self.num_used.float(), self.loss, self.grad_norm,
                              self.skipped.float(), *(v.float() for v in self.extras.values())]).tolist()
        mean_entropy, num_used, loss, grad_norm, skipped, *extras = values
        return StepStats(mean_entropy, int(num_used), loss, grad_norm, bool(skipped), dict(zip(self.extras, extras)))


@dataclass(frozen=True)
class StepStats:
    """One step's statistics as Python numbers, what travels from the adapter to the driver."""

    mean_entropy: float
    num_used: int  # samples that entered the loss
    loss: float
    grad_norm: float
    skipped: bool  # no update was made
    extras: dict[str, float] = field(default_factory=dict)  # method-specific scalars

    @classmethod
    def nothing_served(cls) -> "StepStats":
        """A step whose batch had no readable image: nothing served, nothing adapted."""
        return cls(float("nan"), 0, 0.0, 0.0, True)

    def as_dict(self) -> dict[str, float]:
        """Every statistic by name, the method's extras included (benchmark tables)."""
        return {"mean_entropy": self.mean_entropy, "num_used": self.num_used, "loss": self.loss,
                "grad_norm": self.grad_norm, "skipped": float(self.skipped), **self.extras}


def no_update(logits: torch.Tensor, num_used: torch.Tensor | None = None,
              mean_entropy: torch.Tensor | None = None) -> StepResult:
    """The result of a step that changed no weights (no adaptation, or every sample filtered)."""
    logits = logits.detach()
    zero = logits.new_zeros(())
    return StepResult(logits, entropy(logits).mean() if mean_entropy is None else mean_entropy,
                      torch.zeros((), dtype=torch.long, device=logits.device) if num_used is None else num_used,
                      zero, zero, torch.ones((), dtype=torch.bool, device=logits.device))


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample softmax entropy H(p) = -sum_c p_c log p_c."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def use_batch_statistics(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Make every BatchNorm normalise with the test batch's statistics, in train and eval mode.

    `track_running_stats=False` alone is not enough: PyTorch keeps using the running buffers in
    eval mode while they exist (pytorch#37823; torch-ttt gets this wrong), so they are removed.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in layers:
        bn.track_running_stats = False
        bn.running_mean = None
        bn.running_var = None
        bn.num_batches_tracked = None
    return layers


class Adapter(ABC):
    """Online test-time adaptation of a classifier. Subclasses register with
    `@ADAPTERS.register(name, description=..., **needs)` (the needs: `AdapterInfo`).

    The model passed in is copied, so the caller's source model stays untouched.
    `reset_every` (steps) resets weights, optimiser and method state, as RDumb does; the step
    counter keeps running.
    """

    name: ClassVar[str]
    # Mixed precision for the forward and backward (e.g. torch.bfloat16 on GPU); None = full precision.
    # Models come from `load_model` in channels_last already.
    autocast_dtype: torch.dtype | None = None

    def __init__(self, model: nn.Module, lr: float = 2.5e-4, momentum: float = 0.9, nesterov: bool = False,
                 reset_every: int | None = None, optimizer: str = "sgd") -> None:
        if reset_every is not None and reset_every < 1:
            raise ValueError(f"reset_every must be a positive number of steps or None, got {reset_every}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {optimizer!r}. Valid optimizers: {', '.join(OPTIMIZERS)}.")
        self.model = self.configure_model(copy.deepcopy(model))
        self.params = dict(self.adapted_parameters(self.model))
        self.optimizer = OPTIMIZERS[optimizer](list(self.params.values()), lr, momentum, nesterov) if self.params else None
        self.reset_every = reset_every
        self.num_steps = 0
        self.restore_prob = 0.0
        self._restore_generator: torch.Generator | None = None
        self.setup()
        self._initial = self._state()

    # ---- public API: do not override -------------------------------------------------------
    def step(self, images: torch.Tensor) -> StepResult:
        """Predict on a normalised batch and adapt on it; returns the pre-update logits."""
        with torch.enable_grad(), torch.autocast(images.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                                 enabled=self.autocast_dtype is not None):
            result = self.forward_and_adapt(images)
        if result.logits.dtype != torch.float32 and self.autocast_dtype is not None:
            result.logits = result.logits.float()
        if self.restore_prob:
            self._stochastic_restore()
        self.num_steps += 1
        if self.reset_every and self.num_steps % self.reset_every == 0:
            self.reset()
        return result

    def enable_stochastic_restore(self, prob: float, seed: int = 0) -> None:
        """After every step, put each element of the adapted parameters back to its source value
        with probability `prob` (CoTTA's stochastic restore, Wang et al., CVPR 2022).

        Masks are drawn on the parameters' device from the adapter's own generator, which is
        checkpointed and rewound by `reset()` like everything else.
        """
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"restore probability must be in [0, 1], got {prob}")
        if prob and not self.params:
            raise ValueError(f"{type(self).__name__} adapts no parameters: there is nothing to restore")
        self.restore_prob = prob
        if not prob:
            return
        device = next(iter(self.params.values())).device
        self._restore_generator = torch.Generator(device).manual_seed(seed)
        self._initial = self._state()

    def reset(self) -> None:
        """Back to the source state, bitwise (the step counter keeps running)."""
        self._load(self._initial)

    def snapshot(self) -> dict[str, np.ndarray]:
        """Only what adaptation changes (adapted parameters and BN buffers) of the model that serves
        the predictions, as numpy arrays."""
        state = self.serving_model().state_dict()
        keys = [k for k in state if k in self.params or _is_norm_buffer(k)]
        return {k: state[k].detach().cpu().numpy().copy() for k in keys}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: weights, optimiser, method state, counters."""
        return {**self._state(), "num_steps": self.num_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load(state)
        self.num_steps = int(state["num_steps"])

    # ---- extension points --------------------------------------------------------------------
    @classmethod
    def defaults_for(cls, num_classes: int, image_size: int) -> dict[str, Any]:
        """Options that replace the ImageNet defaults for another kind of model (none by default)."""
        return {}

    @abstractmethod
    def configure_model(self, model: nn.Module) -> nn.Module:
        """Put the (copied) model in the method's mode: train/eval, BN statistics, requires_grad."""

    def setup(self) -> None:
        """Build method state from the configured model (teachers, anchors), before the initial
        state is recorded."""

    def serving_model(self) -> nn.Module:
        """The module whose outputs are served (CoTTA's teacher); the adapted model by default."""
        return self.model

    def adapted_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs the optimiser updates; none by default."""
        return []

    @abstractmethod
    def forward_and_adapt(self, images: torch.Tensor) -> StepResult:
        """One forward (and update) on a batch."""

    def transform_gradients(self) -> None:
        """Change the gradients between backward and the optimiser step (LCoTTA's projection)."""

    def extra_state(self) -> dict[str, Any]:
        """Method state beyond weights and optimiser (EMAs, memories); tensors are copied."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ---- helpers -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return copy.deepcopy({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "extra": self.extra_state(),
            "restore_generator": self._restore_generator.get_state() if self._restore_generator else None,
        })

    def _load(self, state: dict[str, Any]) -> None:
        state = copy.deepcopy(state)
        self.model.load_state_dict(state["model"])
        if self.optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
        self.load_extra_state(state["extra"])
        if self._restore_generator is not None:
            self._restore_generator.set_state(state["restore_generator"])

    @torch.no_grad()
    def _stochastic_restore(self) -> None:
        source = self._initial["model"]
        for name, p in self.params.items():
            mask = torch.rand(p.shape, generator=self._restore_generator, device=p.device) < self.restore_prob
            p.copy_(torch.where(mask, source[name], p))

    def _update(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward and SGD step; returns the gradient norm of the adapted parameters."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.transform_gradients()
        norm = grad_norm(self.params.values())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm


def grad_norm(params) -> torch.Tensor:
    """The 2-norm of all gradients together (zero when there are none), without a host sync."""
    params = list(params)
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def norm_affine_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The gamma/beta of every BatchNorm layer (Tent's choice), in module order."""
    out = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for param_name, param in module.named_parameters(recurse=False):
                out.append((f"{module_name}.{param_name}" if module_name else param_name, param))
    return out


def _is_norm_buffer(key: str) -> bool:
    return key.endswith(("running_mean", "running_var"))
