"""`cotta`: continual test-time adaptation with a mean teacher, augmentation and stochastic restore.

Wang et al., "Continual Test-Time Domain Adaptation" (CVPR 2022), qinenergy/cotta
`imagenet/cotta.py` (and `cifar/cotta.py`). Three copies of the model, all with test-batch BN
statistics: the student (every weight and bias trained), an EMA teacher and the frozen source
anchor. Per batch:
1. student forward;
2. anchor confidence c = mean_i max softmax(anchor(x_i));
3. teacher prediction: if c < `confidence_threshold` (ImageNet 0.1, CIFAR 0.92), the mean of the
   teacher's logits over 32 augmented copies (`adapters.augment`), otherwise one teacher forward;
4. loss: symmetric cross-entropy between student and teacher, -1/2 sum p_t log p_s -
   1/2 sum p_s log p_t (ImageNet; CIFAR uses the first term alone, `symmetric=False`), the
   teacher side detached as it carries no gradient;
5. optimiser step on the student;
6. teacher <- 0.999 teacher + 0.001 student (all parameters);
7. stochastic restore: each element of every weight and bias goes back to its source value with
   probability `restore_prob` (ImageNet 0.001, CIFAR 0.01); the optimiser state is left alone.
   This is the base class's `enable_stochastic_restore`, a policy any adapter can use.
The teacher's prediction is what CoTTA serves, so `StepResult.logits` are the teacher's.

ImageNet defaults: SGD lr 0.01, momentum 0.9, Nesterov, batch 64. For small 10-class models
(the embedded one), `defaults_for` gives the CIFAR-10 configuration: Adam lr 1e-3 (beta1 0.9),
threshold 0.92, restore 0.01, one-sided loss. Restore masks and augmentation noise are drawn on
the model's device from the adapter's own generators, which are part of `state_dict()`; `reset()`
rewinds them with everything else. The augmentation needs [0, 1] pixels, so the adapter is told
the input normalisation (`input_mean`, `input_std`).

Speed: the 32 copies' parameters are drawn one after another (the reference's RNG order), then
their augmentation and teacher forward run on `copy_workers` threads (default: as many as torch's
intra-op threads on CPU, one on CUDA, where kernels are asynchronous anyway). The copies are
independent and the teacher is read-only during them, so the result is the sequential one bit for
bit; on a small CPU model, where one forward cannot fill the cores, it is up to that many times
faster (benchmarks/adapter_step_time.py).
"""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from .augment import Augmentation, apply_augmentation, draw_augmentation
from .base import ADAPTERS, Adapter, StepResult, entropy, use_batch_statistics


@ADAPTERS.register("cotta", description="Continual TTA: a mean teacher, augmented pseudo-labels and stochastic "
                                   "restore (Wang et al., CVPR 2022)", input_normalisation=True)
class CoTTA(Adapter):
    def __init__(self, model: nn.Module, lr: float = 0.01, momentum: float = 0.9, nesterov: bool = True,
                 reset_every: int | None = None, optimizer: str = "sgd", teacher_momentum: float = 0.999,
                 restore_prob: float = 0.001, confidence_threshold: float = 0.1, augmentations: int = 32,
                 symmetric: bool = True, input_mean: tuple[float, ...] = (0.0, 0.0, 0.0),
                 input_std: tuple[float, ...] = (1.0, 1.0, 1.0), seed: int = 0,
                 copy_workers: int | None = None) -> None:
        self.teacher_momentum = teacher_momentum
        self.copy_workers = copy_workers
        self.confidence_threshold, self.augmentations, self.symmetric = confidence_threshold, augmentations, symmetric
        self.input_mean, self.input_std, self.seed = input_mean, input_std, seed
        super().__init__(model, lr, momentum, nesterov, reset_every, optimizer)
        if restore_prob:
            self.enable_stochastic_restore(restore_prob, seed)

    def setup(self) -> None:
        device = next(iter(self.params.values())).device
        self.anchor = copy.deepcopy(self.model).requires_grad_(False)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        self.generator = torch.Generator().manual_seed(self.seed)  # augmentation parameters
        self.device_generator = torch.Generator(device).manual_seed(self.seed)  # augmentation noise
        self._pixel_mean = torch.tensor(self.input_mean, device=device).view(1, -1, 1, 1)
        self._pixel_std = torch.tensor(self.input_std, device=device).view(1, -1, 1, 1)
        workers = self.copy_workers or (1 if device.type == "cuda" else torch.get_num_threads())
        self._copies = ThreadPoolExecutor(workers, thread_name_prefix="cotta-copy") if workers > 1 else None

    def serving_model(self) -> nn.Module:
        return self.teacher

    @classmethod
    def defaults_for(cls, num_classes: int, image_size: int) -> dict[str, Any]:
        if num_classes > 100:
            return {}
        return {"optimizer": "adam", "lr": 1e-3, "nesterov": False, "confidence_threshold": 0.92,
                "restore_prob": 0.01, "symmetric": False}

    def configure_model(self, model: nn.Module) -> nn.Module:
        model.train().requires_grad_(True)
        use_batch_statistics(model)
        return model

    def adapted_parameters(self, model: nn.Module):
        return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in ("weight", "bias")]

    def forward_and_adapt(self, images: torch.Tensor) -> StepResult:
        logits = self.model(images)
        with torch.no_grad():
            confidence = self.anchor(images).softmax(1).amax(1).mean()
            # The one host sync the method needs: augment or not.
            if float(confidence) < self.confidence_threshold:
                teacher = self._augmented_teacher(images)
            else:
                teacher = self.teacher(images)
        loss = -(teacher.softmax(1) * logits.log_softmax(1)).sum(1)
        if self.symmetric:
            loss = 0.5 * loss - 0.5 * (logits.softmax(1) * teacher.log_softmax(1)).sum(1)
        loss = loss.mean()
        grad_norm = self._update(loss)
        with torch.no_grad():
            teacher_params = list(self.teacher.parameters())
            torch._foreach_mul_(teacher_params, self.teacher_momentum)
            torch._foreach_add_(teacher_params, [p.detach() for p in self.model.parameters()],
                                alpha=1 - self.teacher_momentum)
        # The stochastic restore (step 7) follows in `Adapter.step`, after this teacher update.
        return StepResult(teacher, entropy(teacher).mean(), torch.tensor(len(images), device=logits.device),
                          loss.detach(), grad_norm, torch.zeros((), dtype=torch.bool, device=logits.device))

    def _augmented_teacher(self, images: torch.Tensor) -> torch.Tensor:
        """The mean of the teacher's logits over `augmentations` augmented copies of `images`."""
        pixels = images * self._pixel_std + self._pixel_mean
        draws = [draw_augmentation(self.generator, self.device_generator, images.shape, images.dtype)
                 for _ in range(self.augmentations)]

        device = images.device.type

        def teacher_on(draw: Augmentation) -> torch.Tensor:
            # Grad mode and autocast are per thread: carry the step's into the worker.
            with torch.no_grad(), torch.autocast(device, dtype=self.autocast_dtype or torch.bfloat16,
                                                 enabled=self.autocast_dtype is not None):
                return self.teacher((apply_augmentation(pixels, draw) - self._pixel_mean) / self._pixel_std)

        outputs = list(self._copies.map(teacher_on, draws)) if self._copies else [teacher_on(d) for d in draws]
        return torch.stack(outputs).mean(0)

    def extra_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "generator": self.generator.get_state(),
                "device_generator": self.device_generator.get_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.generator.set_state(state["generator"])
        self.device_generator.set_state(state["device_generator"])
