"""EOT and BPDA wrappers (robustact.attacks.wrappers) and the k-WTA BPDA surrogate."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustact.activations import KWTA
from robustact.activations.kwta import kwta
from robustact.activations.select import kth_largest
from robustact.attacks import PGD
from robustact.attacks.losses import cross_entropy
from robustact.attacks.wrappers import BPDA, EOT, is_randomized
from robustact.errors import ConfigError


class UniformNoise(nn.Module):
    """Adds U(-a, a) noise in train and eval mode (a toy randomized defense)."""

    def __init__(self, a: float = 0.1) -> None:
        super().__init__()
        self.a = a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.a * (2 * torch.rand_like(x) - 1)


class GaussianNoise(nn.Module):
    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sigma * torch.randn_like(x)


def small_net(act: nn.Module | None = None, noise: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Flatten()]
    if noise is not None:
        layers.append(noise)
    layers += [nn.Linear(48, 40), act if act is not None else nn.ReLU(), nn.Linear(40, 5)]
    return nn.Sequential(*layers).eval()


def input_grad(model: nn.Module, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad((model(x) * weights).sum(), x)
    return grad


def images(b: int = 6) -> torch.Tensor:
    return torch.rand(b, 3, 4, 4, generator=torch.Generator().manual_seed(1))


# ---- EOT ----------------------------------------------------------------------------------------
def test_eot_of_deterministic_model_is_the_model() -> None:
    model = small_net()
    x = images()
    w = torch.randn(6, 5)
    eot = EOT(model, n=8)
    assert eot.randomized and eot.n == 8
    torch.testing.assert_close(eot(x), model(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(input_grad(eot, x, w), input_grad(model, x, w),
                               rtol=1e-5, atol=1e-5)


def test_eot_one_batched_forward() -> None:
    model = small_net()
    calls: list[int] = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    EOT(model, n=16)(images(6))
    assert calls == [96]  # n * B within the default CPU chunk: one forward, no probe
    calls.clear()
    EOT(model, n=32, max_batch=64)(images(6))
    assert calls == [1, 64, 64, 64]  # probe of one image, then chunks of max_batch


def test_eot_matches_closed_form_expectation() -> None:
    """x -> W(x + sigma z), z ~ N(0, I): E[logits] = W x and the gradient is W^T c exactly."""
    torch.manual_seed(0)
    sigma, n = 0.5, 4096
    lin = nn.Linear(48, 5, bias=False)
    model = nn.Sequential(nn.Flatten(), GaussianNoise(sigma), lin).eval()
    x = images(4)
    eot = EOT(model, n=n)
    out = eot(x)
    expected = x.flatten(1) @ lin.weight.T
    # the error of each mean logit is N(0, sigma^2 ||w_row||^2 / n): allow 5 standard deviations
    std = sigma * lin.weight.norm(dim=1) / math.sqrt(n)
    assert ((out - expected).abs() <= 5 * std).all()
    # a single draw is far off (guards against the noise being silently ignored)
    assert ((model(x) - expected).abs() > 5 * std).any()
    c = torch.randn(4, 5)
    torch.testing.assert_close(input_grad(eot, x, c), (c @ lin.weight).view_as(x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("max_batch", [7, 24, 1])
def test_eot_chunking_matches_one_forward(max_batch: int) -> None:
    model = small_net(noise=UniformNoise(0.3))  # gradient depends on the draws (ReLU pattern)
    x = images(6)
    w = torch.randn(6, 5)
    torch.manual_seed(3)
    ref, ref_grad = EOT(model, n=10)(x), input_grad(EOT(model, n=10), x, w)
    for checkpoint in (None, False):
        eot = EOT(model, n=10, max_batch=max_batch, checkpoint=checkpoint)
        torch.manual_seed(3)
        out, grad = eot(x), input_grad(eot, x, w)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_eot_memory_bytes_sets_chunks() -> None:
    model = small_net()
    calls: list[int] = []
    model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = images(6)
    eot = EOT(model, n=4, memory_bytes=10 * 4 * (48 + 48 + 40 + 40 + 5))  # ~10 images
    torch.testing.assert_close(eot(x), model(x), rtol=1e-5, atol=1e-5)
    assert max(calls[:-1]) <= 10 and sum(calls[:-1]) == 24 + 1  # +1: the probe forward


def test_eot_probs_reduction() -> None:
    model = small_net(noise=UniformNoise(0.5))
    x = images(6)
    torch.manual_seed(0)
    out = EOT(model, n=16, reduce="probs")(x)
    torch.manual_seed(0)
    draws = model(x.repeat(16, 1, 1, 1)).view(16, 6, 5)
    torch.testing.assert_close(out.exp(), draws.softmax(-1).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(6))


def looped_eot_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                        n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force: n forward+backward passes, one draw each; the mean per-draw gradient of
    the summed cross-entropy and the mean logits."""
    grads, outs = [], []
    for _ in range(n):
        xr = x.clone().requires_grad_()
        out = model(xr)
        (grad,) = torch.autograd.grad(cross_entropy(out, y).sum(), xr)
        grads.append(grad)
        outs.append(out.detach())
    return torch.stack(grads).mean(0), torch.stack(outs).mean(0)


@pytest.mark.parametrize(("draws_per_chunk", "two_noises"), [(1, True), (1, False), (5, False)])
def test_eot_loss_gradient_is_the_mean_per_draw_gradient(draws_per_chunk: int,
                                                         two_noises: bool) -> None:
    """The gradient attacks get through EOT: the per-draw loss gradients averaged over the
    same draws as a loop with the same seed (one noise layer draws the same stream in chunks
    of several draws; two noise layers need one draw per chunk for that)."""
    model = small_net(act=nn.Sequential(UniformNoise(0.5), nn.ReLU()) if two_noises else None,
                      noise=UniformNoise(0.3))
    x, y = images(6), torch.arange(6) % 5
    eot = EOT(model, n=9, max_batch=6 * draws_per_chunk)
    torch.manual_seed(5)
    loss, grad, logits = eot.loss_gradient(x, y, cross_entropy)
    torch.manual_seed(5)
    want_grad, want_logits = looped_eot_gradient(model, x, y, 9)
    torch.testing.assert_close(grad, want_grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, cross_entropy(want_logits, y), rtol=1e-5, atol=1e-6)
    # the draws matter: the gradient of the loss of the mean logits is another quantity
    xr = x.clone().requires_grad_()
    torch.manual_seed(5)
    (of_mean,) = torch.autograd.grad(cross_entropy(eot(xr), y).sum(), xr)
    assert not torch.allclose(of_mean, grad, rtol=1e-3, atol=1e-6)


def test_eot_loss_gradient_closed_form() -> None:
    """x -> W(x + sigma z): a loss linear in the logits has the gradient W^T c for any draws."""
    lin = nn.Linear(48, 5, bias=False)
    model = nn.Sequential(nn.Flatten(), GaussianNoise(0.5), lin).eval()
    x, y, c = images(4), torch.zeros(4, dtype=torch.long), torch.randn(4, 5)
    _, grad, _ = EOT(model, n=64, max_batch=40).loss_gradient(
        x, y, lambda logits, labels: (logits * c).sum(1))
    torch.testing.assert_close(grad, (c @ lin.weight).view_as(x), rtol=1e-5, atol=1e-6)


def test_eot_loss_gradient_back_propagates_each_chunk_once() -> None:
    """Chunk by chunk, no recomputation: n * B / chunk forwards, each back-propagated before
    the next runs (at most one chunk's graph alive)."""
    model = small_net(noise=UniformNoise(0.3))
    events: list[str] = []
    model.register_forward_hook(lambda m, i, o: events.append(f"f{i[0].shape[0]}"))
    model[-1].register_full_backward_hook(lambda m, gi, go: events.append("b"))
    EOT(model, n=8, max_batch=30).loss_gradient(images(6), torch.zeros(6, dtype=torch.long),
                                               cross_entropy)
    assert events == ["f1", "f30", "b", "f18", "b"]  # f1: the probe of the activation size
    # a draw of 6 images fills a quarter of a forward of 24: one draw per forward, as a loop
    events.clear()
    eot = EOT(model, n=8, max_batch=24)
    assert eot.draws_per_forward(images(6)) == 1
    eot.loss_gradient(images(6), torch.zeros(6, dtype=torch.long), cross_entropy)
    assert events == ["f1"] + ["f6", "b"] * 8


def test_pgd_through_eot_counts_one_query_per_step_and_takes_targets() -> None:
    base = nn.Sequential(UniformNoise(0.05), *kwta_net()).eval()
    calls: list[bool] = []
    base.register_forward_hook(lambda m, i, o: calls.append(torch.is_grad_enabled()))
    x, y = images(6), torch.arange(6) % 5
    result = PGD(eps=8 / 255, steps=3, step_size=2 / 255)(EOT(base, n=10, max_batch=30), x, y)
    assert ((result.queries >= 3) & (result.queries <= 4)).all()  # + the last point if open
    # the probe of the activation size, 3 steps x 2 chunks of 5 draws with gradient, then
    # only forwards without (the last point, on the examples still open)
    assert calls[:7] == [False] + [True] * 6 and not any(calls[7:])
    targeted = PGD(eps=8 / 255, steps=2, targeted=True, n_target_classes=2)
    result = targeted(EOT(base, n=4, max_batch=6), x, y)  # a per-example target per draw
    assert result.x_adv.shape == x.shape and (result.x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_eot_rejects_bad_arguments() -> None:
    for kwargs in ({"n": 0}, {"max_batch": 0}, {"reduce": "mean"}, {"memory_bytes": 0}):
        with pytest.raises(ConfigError):
            EOT(small_net(), **kwargs)


def test_is_randomized() -> None:
    x = images()
    assert not is_randomized(small_net(), x)
    noisy = small_net(noise=UniformNoise())
    noisy.train()
    assert is_randomized(noisy, x)
    assert noisy.training  # mode restored
    dropout = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(48, 5))
    assert not is_randomized(dropout, x)  # dropout is off in eval mode


# ---- BPDA ---------------------------------------------------------------------------------------
def test_bpda_without_surrogates_is_identity() -> None:
    model = small_net()
    x = images()
    w = torch.randn(6, 5)
    bpda = BPDA(model)
    assert bpda.layers == []
    assert torch.equal(bpda(x), model(x))
    assert torch.equal(input_grad(bpda, x, w), input_grad(model, x, w))


def kwta_net(mode: str = "volume") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), KWTA(0.2, mode=mode), nn.Flatten(),
                         nn.Linear(8 * 16, 5)).eval()


@pytest.mark.parametrize("mode", ["volume", "channel"])
def test_bpda_on_kwta_network(mode: str) -> None:
    model = kwta_net(mode)
    x = images()
    w = torch.randn(6, 5)
    bpda = BPDA(model)
    assert bpda.layers == ["1"]
    assert torch.equal(bpda(x), model(x))  # forward bit-for-bit the model's
    plain, surrogate = input_grad(model, x, w), input_grad(bpda, x, w)
    assert surrogate.abs().sum() > 0
    assert not torch.allclose(plain, surrogate, rtol=1e-3, atol=1e-6)


def test_bpda_kwta_gradient_reaches_units_below_threshold() -> None:
    layer = KWTA(0.25)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    t = kth_largest(x, 16).unsqueeze(1)
    tau = 0.1 * x.std(1, correction=0, keepdim=True)
    just_below = (x < t) & (x > t - tau)
    far_below = x < t - 20 * tau
    assert just_below.any() and far_below.any()

    def grad(module: nn.Module) -> torch.Tensor:
        xr = x.clone().requires_grad_()
        module(xr).sum().backward()
        assert xr.grad is not None
        return xr.grad

    plain, bpda = grad(layer), grad(BPDA(layer))
    assert (plain[just_below] == 0).all()
    assert (bpda[just_below].abs() > 0.1).all()
    assert bpda[far_below].abs().max() < 1e-6
    winners = x >= t + 20 * tau
    torch.testing.assert_close(bpda[winners], torch.ones_like(bpda[winners]))


@pytest.mark.parametrize("mode", ["volume", "channel"])
def test_kwta_surrogate_respects_mode(mode: str) -> None:
    """At a tiny temperature the surrogate is the hard k-WTA of its mode (off the threshold)."""
    layer = KWTA(0.2, mode=mode)
    layer.bpda_temperature = 1e-4
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    sur = layer.bpda_surrogate(x)
    hard = kwta(x, ratio=0.2, mode=mode)
    rows = x.reshape(12, -1) if mode == "channel" else x.reshape(3, -1)
    at_threshold = (rows == kth_largest(rows, layer.num_winners(rows.shape[1]))[:, None])
    off = ~at_threshold.reshape(x.shape)
    torch.testing.assert_close(sur[off], hard[off], rtol=1e-4, atol=1e-4)
    assert KWTA.bpda_temperature == 0.1  # the class default is untouched


def test_kwta_constructor_and_state_unchanged() -> None:
    layer = KWTA(0.1, k=None, mode="channel", rounding="ceil")
    assert layer.bpda_temperature == 0.1
    assert set(layer.get_extra_state()) == {"ratio", "k", "mode", "rounding"}
    with pytest.raises(ConfigError):
        layer.bpda_temperature = 0.0
        layer.bpda_surrogate(torch.randn(2, 3, 4, 4))


class Exploding(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_bpda_leaves_model_unchanged_even_on_error() -> None:
    model = kwta_net()
    layer = model[1]
    hooks_before = (len(layer._forward_hooks), len(layer._forward_pre_hooks))
    x = images()
    BPDA(model)(x.requires_grad_()).sum().backward()
    assert "forward" not in layer.__dict__
    assert (len(layer._forward_hooks), len(layer._forward_pre_hooks)) == hooks_before

    broken = nn.Sequential(*model, Exploding())
    with pytest.raises(RuntimeError, match="boom"):
        BPDA(broken)(images())
    assert "forward" not in layer.__dict__
    # the plain model again has the hard k-WTA gradient (zero below the threshold)
    h = torch.randn(2, 50).requires_grad_()
    layer(h).sum().backward()
    assert h.grad is not None and (h.grad == 0).sum() == 2 * 40


def test_bpda_restores_instance_forward() -> None:
    layer = KWTA(0.5)
    custom = layer.forward
    layer.forward = custom  # an instance attribute set by someone else
    BPDA(layer)(torch.randn(2, 8, requires_grad=True))
    assert layer.__dict__["forward"] is custom


def test_eot_of_bpda_with_chunking() -> None:
    model = kwta_net()
    x = images(4)
    w = torch.randn(4, 5)
    ref = input_grad(BPDA(model), x, w)
    grad = input_grad(EOT(BPDA(model), n=6, max_batch=5), x, w)  # checkpointed chunks
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)
    grad = input_grad(BPDA(EOT(model, n=6, max_batch=5)), x, w)
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)


# ---- attacks through the wrappers ----------------------------------------------------------------
@pytest.mark.parametrize("wrap", ["eot", "bpda", "both"])
def test_pgd_through_wrappers(wrap: str) -> None:
    base = kwta_net()
    base = nn.Sequential(UniformNoise(0.05), *base).eval() if wrap != "bpda" else base
    model = {"eot": lambda: EOT(base, n=8), "bpda": lambda: BPDA(base),
             "both": lambda: EOT(BPDA(base), n=8)}[wrap]()
    x = images(8)
    y = torch.arange(8) % 5
    eps = 8 / 255
    result = PGD(eps=eps, steps=5, step_size=2 / 255)(model, x, y)
    delta = result.x_adv - x
    assert delta.abs().max() <= eps + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.grad_bad_fraction is not None and result.grad_bad_fraction < 0.5
    assert "forward" not in base.__dict__
