"""Gradient accumulation equals the large batch; clipping bounds the update; grad norm per step."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from qfnet.training import Trainer, TrainerConfig


def _train(model, data, loss, **overrides):
    settings = {"max_epochs": 3, "progress_bar": False, "seed": 7} | overrides
    cfg = TrainerConfig(**settings)
    trainer = Trainer(model, loss=loss, config=cfg)
    trainer.fit(data)
    return model


def _reference(model, data, loss, *, batch_size, epochs, optimizer, lr, momentum=0.0):
    """A hand-written loop over sequential batches with the weighted-mean loss of each batch."""
    opt = (
        torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        if optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=lr)
    )
    tensors = data.tensors
    n = len(tensors[0])
    for _ in range(epochs):
        for start in range(0, n, batch_size):
            x, y, *w = (t[start : start + batch_size] for t in tensors)
            per_sample = loss(model(x), y).reshape(len(x), -1).mean(dim=1)  # (N,)
            weight = w[0] if w else torch.ones_like(per_sample)
            opt.zero_grad()
            ((per_sample * weight).sum() / weight.sum()).backward()
            opt.step()
    return model


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("weighted", [False, True])
def test_accumulated_micro_batches_equal_one_large_batch_with_partial_last_group(
    regression, mlp, sq_error, optimizer, weighted
):
    # 28 samples in batches of 4 -> 7 micro-batches per epoch, groups of 3: (3, 3, 1); the
    # large batches are 12, 12, 4.
    data = regression(n=28, weighted=weighted)
    opts = {"optimizer": optimizer, "lr": 0.05, "momentum": 0.9, "shuffle": False}
    small = _train(mlp(), data, sq_error, batch_size=4, accumulate_grad_batches=3, **opts)
    large = _train(mlp(), data, sq_error, batch_size=12, **opts)
    reference = _reference(
        mlp(), data, sq_error, batch_size=12, epochs=3, optimizer=optimizer, lr=0.05, momentum=0.9
    )
    for a, b, c in zip(small.parameters(), large.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, c, rtol=0.0, atol=1e-12)
        torch.testing.assert_close(b, c, rtol=0.0, atol=1e-12)
    moved = max(
        (a - b).abs().max().item()
        for a, b in zip(small.parameters(), mlp().parameters(), strict=True)
    )
    assert moved > 1e-3  # training really changed the weights


def test_accumulation_in_shuffled_order_equals_large_batch(regression, mlp, sq_error):
    # the data order depends on (seed, epoch) only, not on the batch size
    data = regression(n=28, weighted=True)
    small = _train(mlp(), data, sq_error, batch_size=4, accumulate_grad_batches=3, optimizer="adam")
    large = _train(mlp(), data, sq_error, batch_size=12, optimizer="adam")
    for a, b in zip(small.parameters(), large.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0.0, atol=1e-12)


def test_accumulation_with_scalar_mean_loss_matches_large_batch(regression, mlp):
    data = regression(n=30)  # micro-batches 4, 4, 4, 4 | 4, 4, 4, 2
    opts = {"optimizer": "sgd", "lr": 0.1, "shuffle": False}
    small = _train(mlp(), data, nn.MSELoss(), batch_size=4, accumulate_grad_batches=4, **opts)
    reference = _reference(mlp(), data, _sq, batch_size=16, epochs=3, optimizer="sgd", lr=0.1)
    for a, b in zip(small.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0.0, atol=1e-12)


def _sq(output, target):
    return (output - target) ** 2


def test_weighted_loss_is_the_weighted_mean_of_per_sample_losses(regression, mlp, sq_error):
    data = regression(n=16, weighted=True)
    model = mlp()
    reference = copy.deepcopy(model)
    _train(
        model, data, sq_error, batch_size=16, optimizer="sgd", lr=0.1, max_epochs=1, shuffle=False
    )
    x, y, w = data.tensors
    loss = ((reference(x) - y).squeeze(-1) ** 2 * w).sum() / w.sum()
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0.0, atol=1e-14)


def test_a_micro_batch_of_zero_weight_adds_nothing_to_the_accumulated_step(regression, mlp):
    # 12 samples in micro-batches of 4, one step of 3 per epoch; the second micro-batch weighs 0:
    # its own mean is 0/0, which made the step's loss NaN (the NaN guard stopped the run) where
    # the batch of 12 has a finite loss
    x, y, weight = regression(n=12, weighted=True).tensors
    weight = weight.clone()
    weight[4:8] = 0.0
    data = TensorDataset(x, y, weight)

    def run(**settings):
        model = mlp()
        config = TrainerConfig(max_epochs=2, optimizer="sgd", lr=0.05, shuffle=False,
                               progress_bar=False, **settings)  # fmt: skip
        history = Trainer(model, loss=_sq, config=config).fit(data)
        return model, history

    small, small_history = run(batch_size=4, accumulate_grad_batches=3)
    large, large_history = run(batch_size=12)
    assert small_history["train_loss"] == pytest.approx(large_history["train_loss"], rel=1e-12,
                                                        abs=0.0)  # fmt: skip
    for a, b in zip(small.parameters(), large.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0.0, atol=1e-12)


def test_clip_grad_norm_bounds_every_update(regression, mlp, sq_error, recorder):
    data = regression(n=32)
    max_norm, lr = 0.05, 1.0
    cfg = TrainerConfig(
        max_epochs=2,
        batch_size=8,
        optimizer="sgd",
        lr=lr,
        clip_grad_norm=max_norm,
        progress_bar=False,
    )
    Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[recorder]).fit(data)
    assert len(recorder.steps) == 8
    for before, after in zip(recorder.before, recorder.after, strict=True):
        update = torch.cat([(a - b).flatten() for a, b in zip(after, before, strict=True)])
        assert update.norm().item() / lr <= max_norm * (1 + 1e-9)
    # the logged norm is the one before clipping: clipping was active
    assert max(s["grad_norm"] for s in recorder.steps) > 2 * max_norm


def test_clip_grad_value_bounds_every_gradient_element(regression, mlp, sq_error, recorder):
    data = regression(n=32)
    cfg = TrainerConfig(
        max_epochs=1,
        batch_size=8,
        optimizer="sgd",
        lr=1.0,
        clip_grad_value=0.01,
        progress_bar=False,
    )
    Trainer(mlp(), loss=sq_error, config=cfg, callbacks=[recorder]).fit(data)
    largest = max(g.abs().max().item() for grads in recorder.grads for g in grads)
    assert largest <= 0.01
    assert max(s["grad_norm"] for s in recorder.steps) > 0.1


def test_global_grad_norm_is_recorded_at_every_step_and_matches_autograd(
    regression, mlp, sq_error, recorder
):
    data = regression(n=24)
    model = mlp()
    reference = copy.deepcopy(model)
    cfg = TrainerConfig(
        max_epochs=2, batch_size=24, shuffle=False, optimizer="sgd", lr=0.01, progress_bar=False
    )
    Trainer(model, loss=sq_error, config=cfg, callbacks=[recorder]).fit(data)
    x, y = data.tensors
    sq_error(reference(x), y).mean().backward()
    expected = torch.cat([p.grad.flatten() for p in reference.parameters()]).norm().item()
    assert [s["global_step"] for s in recorder.steps] == [1, 2]
    assert recorder.steps[0]["grad_norm"] == pytest.approx(expected, rel=1e-12)
