"""CoTTA against its equations: student, EMA teacher, anchor-gated augmentation, restore."""

import pytest
import torch
from torch.func import functional_call

from stream_monitor.adapters import ADAPTERS
from stream_monitor.adapters.augment import cotta_augment
from stream_monitor.adapters.base import use_batch_statistics

from .test_equations import assert_close, confident_model, diverse_batches

D = torch.float64


def batch_stat_model():
    model = confident_model()
    use_batch_statistics(model)
    return model.train()


def sgd_nesterov(params, grads, buffers, lr, momentum=0.9):
    """PyTorch's SGD with Nesterov: buf = m buf + g; p -= lr (g + m buf)."""
    with torch.no_grad():
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            buffers[i] = g.clone() if buffers[i] is None else momentum * buffers[i] + g
            p -= lr * (g + momentum * buffers[i])


def reference_cotta(data, lr, symmetric=True, teacher_momentum=0.999):
    """No augmentation (threshold 0), no restore: the student/teacher equations alone."""
    model = batch_stat_model()
    names = [n for n, _ in model.named_parameters()]
    student = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    teacher = [p.detach().clone() for p in model.parameters()]
    buffers, served = [None] * len(student), []
    for x in data:
        s = functional_call(model, dict(zip(names, student, strict=True)), (x,))
        t = functional_call(model, dict(zip(names, teacher, strict=True)), (x,)).detach()
        served.append(t)
        loss = -(t.softmax(1) * s.log_softmax(1)).sum(1)
        if symmetric:
            loss = 0.5 * loss - 0.5 * (s.softmax(1) * t.log_softmax(1)).sum(1)
        sgd_nesterov(student, torch.autograd.grad(loss.mean(), student), buffers, lr)
        teacher = [teacher_momentum * t_ + (1 - teacher_momentum) * s_.detach()
                   for t_, s_ in zip(teacher, student, strict=True)]
    return served, [p.detach() for p in student], teacher


@pytest.mark.parametrize("symmetric", [True, False])
def test_cotta_matches_the_equations_without_augmentation_or_restore(symmetric):
    data = diverse_batches(6)
    ref_served, ref_student, ref_teacher = reference_cotta(data, lr=0.05, symmetric=symmetric)
    adapter = ADAPTERS.get("cotta")(confident_model(), lr=0.05, confidence_threshold=0.0, restore_prob=0.0,
                                    symmetric=symmetric)
    assert_close([adapter.step(x).logits for x in data], ref_served)
    assert_close([p.detach() for p in adapter.model.parameters()], ref_student)
    assert_close([p.detach() for p in adapter.teacher.parameters()], ref_teacher)


def test_cotta_serves_the_mean_of_augmented_teacher_predictions_when_the_anchor_is_unsure():
    x = diverse_batches(1)[0]
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    adapter = ADAPTERS.get("cotta")(confident_model(), confidence_threshold=1.01, augmentations=4,
                                    input_mean=mean, input_std=std, seed=5)
    served = adapter.step(x).logits
    g, dg = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    m, s = torch.tensor(mean, dtype=D).view(1, 3, 1, 1), torch.tensor(std, dtype=D).view(1, 3, 1, 1)
    model = batch_stat_model()
    with torch.no_grad():
        expected = torch.stack([model((cotta_augment(x * s + m, g, dg) - m) / s) for _ in range(4)]).mean(0)
        plain = model(x)
    torch.testing.assert_close(served, expected, rtol=0, atol=1e-6)
    assert (served - plain).abs().max() > 1e-3  # the augmented path was really taken


def test_augmented_copies_on_threads_give_the_sequential_result_bit_for_bit():
    data = diverse_batches(3)

    def run(workers):
        adapter = ADAPTERS.get("cotta")(confident_model(), lr=0.05, confidence_threshold=1.01, augmentations=6,
                                        restore_prob=0.1, seed=3, copy_workers=workers)
        served = [adapter.step(x).logits for x in data]
        return served, [p.detach().clone() for p in adapter.teacher.parameters()]

    (served_1, teacher_1), (served_3, teacher_3) = run(1), run(3)
    assert all(torch.equal(a, b) for a, b in zip(served_1, served_3, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(teacher_1, teacher_3, strict=True))


def test_cotta_restore_puts_elements_back_to_source_with_the_given_probability():
    data = diverse_batches(3)
    always = ADAPTERS.get("cotta")(confident_model(), lr=0.05, confidence_threshold=0.0, restore_prob=1.0)
    source = {k: v.clone() for k, v in always.params.items()}
    for x in data:
        always.step(x)
    assert all(torch.equal(source[k], p) for k, p in always.params.items())
    assert any(not torch.equal(source[k], p) for k, p in always.teacher.named_parameters())

    partly = ADAPTERS.get("cotta")(confident_model(), lr=0.05, confidence_threshold=0.0, restore_prob=0.3)
    partly.step(data[0])
    flat = torch.cat([(p == source[k]).reshape(-1) for k, p in partly.params.items()]).double()
    assert 0.25 < float(flat.mean()) < 0.35  # 1,700 elements: 0.3 +- 0.011 (1 sd)


def test_cotta_uses_the_cifar_configuration_for_small_models():
    assert ADAPTERS.get("cotta").defaults_for(1000, 224) == {}
    options = ADAPTERS.get("cotta").defaults_for(10, 32)
    adapter = ADAPTERS.get("cotta")(confident_model(), **options)
    assert isinstance(adapter.optimizer, torch.optim.Adam) and adapter.optimizer.param_groups[0]["lr"] == 1e-3
    assert (adapter.confidence_threshold, adapter.restore_prob, adapter.symmetric) == (0.92, 0.01, False)
    default = ADAPTERS.get("cotta")(confident_model())
    group = default.optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.01, 0.9, True)


def test_augmentation_is_seeded_in_range_and_varies():
    images = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def draw(seed, n=2):
        g, dg = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        return [cotta_augment(images, g, dg) for _ in range(n)]

    a, b = draw(1), draw(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])
    assert all(x.shape == images.shape and x.min() >= 0 and x.max() <= 1 for x in a)
    # A flat grey image stays flat (edge padding leaves no black corners) and changes only in
    # tone, within the jitter's range, plus noise of std 0.005.
    grey = torch.full((2, 3, 16, 16), 0.5)
    g, dg = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(8):
        out = cotta_augment(grey, g, dg)
        assert float(out.std(dim=(2, 3)).max()) < 0.02 and 0.15 < float(out.mean()) < 0.85
