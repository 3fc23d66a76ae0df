"""make_adapter: per-model defaults and what each method needs from the stream or the model."""

import re

import pytest
import torch

from stream_monitor.adapters import ADAPTERS
from stream_monitor.adapters.base import AdapterRegistry
from stream_monitor.adapters.tent import Tent
from stream_monitor import adaptation
from stream_monitor.adaptation import make_adapter
from stream_monitor.models import load_model
from stream_monitor.registry import UnknownNameError


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
    assert asked == [2000] and adapter.fisher is not None and adapter.fisher.ndim == 1


def test_eata_without_first_images_is_a_clear_error(embedded):
    message = "Adapter 'eata' estimates its Fisher information on the stream's first 2000 images: pass first_images"
    with pytest.raises(ValueError, match=re.escape(message)):
        make_adapter("eata", embedded)
    assert make_adapter("eata", embedded, fisher_images=embedded.normalise(images(16))).fisher is not None


@pytest.mark.parametrize("name", ADAPTERS.names())
def test_first_images_are_asked_for_exactly_as_the_metadata_says(name, embedded):
    asked = []

    def first(n):
        asked.append(n)
        return images(32)

    make_adapter(name, embedded, first)
    wanted = ADAPTERS.info(name).fisher_images
    assert asked == ([wanted] if wanted else [])


def test_make_adapter_reads_the_metadata_not_the_name(embedded, monkeypatch):
    registry = AdapterRegistry()

    @registry.register("needs-both", description="a Tent that takes everything", fisher_images=5,
                       input_normalisation=True)
    class Recorder(Tent):
        def __init__(self, model, fisher_images=None, input_mean=None, input_std=None, **options):
            self.seen = (fisher_images, input_mean, input_std)
            super().__init__(model, **options)

    monkeypatch.setattr(adaptation, "ADAPTERS", registry)
    adapter = make_adapter("needs-both", embedded, lambda n: images(n))
    fisher_images, mean, std = adapter.seen
    assert fisher_images.shape == (5, 3, 32, 32) and fisher_images.dtype == torch.float32
    assert (mean, std) == (embedded.mean, embedded.std)
    with pytest.raises(ValueError, match="Adapter 'needs-both' estimates its Fisher information on the stream's "
                                         "first 5 images: pass first_images"):
        make_adapter("needs-both", embedded)


def test_an_unknown_adapter_lists_the_valid_ones(embedded):
    with pytest.raises(UnknownNameError, match=re.escape(f"Valid adapters: {', '.join(ADAPTERS.names())}.")):
        make_adapter("tnet", embedded)


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
