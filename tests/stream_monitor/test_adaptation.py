"""make_adapter: per-model defaults and what each method needs from the stream or the model."""

import pytest
import torch

from stream_monitor.adaptation import FISHER_IMAGES, make_adapter
from stream_monitor.models import load_model


@pytest.fixture(scope="module")
def embedded():
    return load_model("embedded")


def images(n, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_eata_takes_its_fisher_from_the_first_stream_images(embedded):
    asked = []

    def first(n):
        asked.append(n)
        return images(64)

    adapter = make_adapter("eata", embedded, first)
    assert asked == [FISHER_IMAGES] and adapter.fisher is not None and adapter.fisher.ndim == 1
    with pytest.raises(ValueError, match="Fisher"):
        make_adapter("eata", embedded)


def test_cotta_gets_the_cifar_configuration_and_the_input_normalisation(embedded):
    adapter = make_adapter("cotta", embedded, lr=5e-4)
    assert adapter.input_mean == embedded.mean and adapter.input_std == embedded.std
    assert adapter.confidence_threshold == 0.92 and isinstance(adapter.optimizer, torch.optim.Adam)
    assert adapter.optimizer.param_groups[0]["lr"] == 5e-4  # an explicit option wins


def test_bf16_autocast_serves_float32_logits_close_to_full_precision(embedded):
    x = embedded.normalise(images(32, seed=1))
    full = make_adapter("tent", embedded).step(x).logits
    half = make_adapter("tent", embedded, precision="bf16").step(x).logits
    assert half.dtype == torch.float32
    assert (half.argmax(1) == full.argmax(1)).float().mean() > 0.9
    with pytest.raises(ValueError, match="Valid precisions: fp32, bf16"):
        make_adapter("tent", embedded, precision="fp8")


def test_restore_probability_is_one_policy_for_every_adapter(embedded):
    assert make_adapter("cotta", embedded).restore_prob == 0.01  # CoTTA's CIFAR rate
    assert make_adapter("cotta", embedded, restore_prob=0.0).restore_prob == 0.0  # turned off
    assert make_adapter("tent", embedded, restore_prob=0.2).restore_prob == 0.2
    assert make_adapter("norm", embedded, restore_prob=0.0).restore_prob == 0.0
    with pytest.raises(ValueError, match="nothing to restore"):
        make_adapter("norm", embedded, restore_prob=0.1)
