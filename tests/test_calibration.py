"""Calibration: ECE against closed forms and a brute-force loop, predict_proba, the SVG diagram."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustact.errors import ConfigError
from robustact.eval import (
    Reliability,
    calibrate,
    expected_calibration_error,
    predict_proba,
    reliability,
)
from robustact.report.reliability import reliability_svg, save_reliability_svg

SVG = "{http://www.w3.org/2000/svg}"


def synthetic(confidence: torch.Tensor, correct: torch.Tensor, k: int = 10,
              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, k) probabilities whose maximum is ``confidence`` (each > 1/k) on a random class,
    the rest spread evenly; labels equal that class where ``correct``, another class elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    n = confidence.shape[0]
    predicted = torch.randint(0, k, (n,), generator=gen)
    probs = ((1 - confidence) / (k - 1)).double().unsqueeze(1).repeat(1, k)
    probs[torch.arange(n), predicted] = confidence.double()
    other = (predicted + torch.randint(1, k, (n,), generator=gen)) % k
    return probs, torch.where(correct, predicted, other)


def brute_force_ece(probs: np.ndarray, labels: np.ndarray, edges: list[float]) -> float:
    """ECE by an explicit loop over bins [lo, hi) (the last one [lo, hi]) and examples."""
    n, bins, total = len(labels), len(edges) - 1, 0.0
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        members = [i for i in range(n)
                   if lo <= probs[i].max() < hi or (b == bins - 1 and probs[i].max() >= hi)
                   or (b == 0 and probs[i].max() < lo)]
        if members:
            acc = sum(float(probs[i].argmax() == labels[i]) for i in members) / len(members)
            conf = sum(float(probs[i].max()) for i in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


@pytest.mark.parametrize("strategy", ["width", "mass"])
def test_perfectly_calibrated_predictor_has_small_ece(strategy: str) -> None:
    # Given the confidences c_i, the correctness Z_i ~ Bernoulli(c_i) are independent, and the
    # bins depend on the c_i only. In bin b, acc - conf = sum_i (Z_i - c_i) / n_b has mean 0 and
    # variance <= 1 / (4 n_b), so E[ECE] <= sum_b n_b / N / (2 sqrt(n_b)) <= sqrt(B / N) / 2
    # (Cauchy-Schwarz). One Z_i moves the ECE by at most 1/N, so by McDiarmid
    # P(ECE > E[ECE] + t) <= exp(-2 N t^2). With delta = 1e-9:
    #     ECE < sqrt(B / N) / 2 + sqrt(ln(1 / delta) / (2 N))  = 0.0061 + 0.0102 for N = 1e5, B = 15
    n, bins, k = 100_000, 15, 10
    gen = torch.Generator().manual_seed(1)
    confidence = 1 / k + (1 - 1 / k) * torch.rand(n, generator=gen, dtype=torch.float64)
    correct = torch.rand(n, generator=gen, dtype=torch.float64) < confidence
    probs, labels = synthetic(confidence, correct, k)
    bound = math.sqrt(bins / n) / 2 + math.sqrt(math.log(1e9) / (2 * n))
    ece = expected_calibration_error(probs, labels, bins=bins, strategy=strategy)
    assert ece < bound
    assert bound == pytest.approx(0.0163, abs=1e-4)


def test_overconfident_predictor() -> None:
    n = 1000
    correct = torch.arange(n) % 2 == 0  # accuracy exactly 0.5
    probs, labels = synthetic(torch.full((n,), 0.99, dtype=torch.float64), correct)
    rel = reliability(probs, labels)
    assert rel.ece == pytest.approx(0.49, abs=1e-9)
    assert rel.mce == pytest.approx(0.49, abs=1e-9)
    assert rel.accuracy == 0.5 and rel.confidence == pytest.approx(0.99)
    assert rel.counts[-1] == n and sum(rel.counts) == n


@pytest.mark.parametrize("bins", [1, 7, 15])
def test_ece_matches_brute_force(bins: int) -> None:
    gen = torch.Generator().manual_seed(bins)
    logits = 3 * torch.randn(300, 5, generator=gen)
    probs = logits.softmax(1)
    labels = torch.randint(0, 5, (300,), generator=gen)
    p, y = probs.double().numpy(), labels.numpy()
    width_edges = [i / bins for i in range(bins + 1)]
    assert expected_calibration_error(probs, labels, bins=bins) == pytest.approx(
        brute_force_ece(p, y, width_edges), abs=1e-12)
    mass_edges = np.quantile(p.max(1), np.linspace(0, 1, bins + 1)).tolist()
    rel = reliability(probs, labels, bins=bins, strategy="mass")
    assert rel.edges == pytest.approx(mass_edges, abs=1e-12)
    assert rel.ece == pytest.approx(brute_force_ece(p, y, mass_edges), abs=1e-12)
    assert max(rel.counts) - min(rel.counts) <= 2  # equal mass (no ties in random data)


def test_bin_edges() -> None:
    one_hot = torch.eye(3)[[0, 1, 2, 0]]
    rel = reliability(one_hot, torch.tensor([0, 1, 2, 1]), bins=10)
    assert rel.counts == [0] * 9 + [4]  # confidence exactly 1.0 falls in the last bin
    assert rel.bin_accuracy[-1] == 0.75 and rel.bin_accuracy[0] is None
    assert rel.ece == pytest.approx(0.25)
    half = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
    assert reliability(half, torch.tensor([0, 1]), bins=2).counts == [0, 2]  # [0.5, 1]
    assert reliability(half, torch.tensor([0, 1]), bins=4).counts == [0, 0, 1, 1]
    assert len(rel.edges) == 11 and rel.edges[0] == 0.0 and rel.edges[-1] == 1.0


def test_invalid_inputs() -> None:
    probs, labels = torch.full((4, 2), 0.5), torch.zeros(4, dtype=torch.long)
    for bins in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="bins must be a positive integer"):
            expected_calibration_error(probs, labels, bins=bins)
    with pytest.raises(ConfigError, match="unknown binning strategy 'quantile'; use one of"):
        expected_calibration_error(probs, labels, strategy="quantile")
    with pytest.raises(ConfigError, match="no examples"):
        expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"must be \(N, K\) and labels \(N,\)"):
        expected_calibration_error(probs, labels[:3])
    with pytest.raises(ConfigError, match="sum to 1 per row.*not logits"):
        expected_calibration_error(torch.randn(4, 2) + 3, labels)
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 2\)"):
        expected_calibration_error(probs, torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ConfigError, match="integer class indices"):
        expected_calibration_error(probs, labels.float())
    with pytest.raises(ConfigError, match="finite and >= 0"):
        expected_calibration_error(torch.tensor([[1.5, -0.5]] * 4), labels)


def test_reliability_record_round_trip() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    rel = reliability(probs, torch.tensor([0, 1, 1]), bins=5)
    record = json.loads(json.dumps(rel.to_dict(), allow_nan=False))
    assert Reliability.from_dict(record) == rel
    assert rel.n == 3 and rel.bins == 5 and rel.accuracy == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="lacks the fields ece"):
        Reliability.from_dict({k: v for k, v in record.items() if k != "ece"})


class Noisy(nn.Module):
    """Adds Gaussian noise to its input even in eval mode (a randomized model); records the
    mode it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x + torch.randn_like(x)


def test_predict_proba_averages_samples() -> None:
    torch.manual_seed(0)
    noisy = Noisy()
    model = nn.Sequential(nn.Linear(4, 3), noisy).train()
    x = torch.rand(10, 4)
    torch.manual_seed(5)
    with torch.no_grad():
        manual = torch.stack([model(x).softmax(1) for _ in range(8)]).mean(0)
    noisy.modes.clear()
    torch.manual_seed(5)
    probs = predict_proba(model, x, n_samples=8)
    assert probs.shape == (10, 3) and probs.device.type == "cpu"
    assert torch.allclose(probs, manual, atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(10), atol=1e-6)
    assert noisy.modes == [False] * 8 and model.training and noisy.training
    single = predict_proba(model, x)
    assert not torch.allclose(single, probs, atol=1e-3)  # the model really is random


def test_predict_proba_eval_mode_and_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 4)).train()
    x = torch.rand(11, 6)
    whole = predict_proba(model, x)
    assert torch.allclose(predict_proba(model, x, batch_size=3), whole, atol=1e-6)
    assert torch.allclose(whole, model.eval()(x).softmax(1).detach(), atol=1e-6)  # no dropout
    assert not model.training  # an eval-mode model stays in eval mode
    predict_proba(model, x)
    assert not model.training
    for kwargs in ({"n_samples": 0}, {"batch_size": 0}):
        with pytest.raises(ConfigError, match="must be a positive integer"):
            predict_proba(model, x, **kwargs)
    with pytest.raises(ConfigError, match=r"\(N, K\) logits"):
        predict_proba(nn.Flatten(0), x)


def test_calibrate_is_predict_then_reliability() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x, y = torch.rand(40, 5), torch.randint(0, 3, (40,))
    rel = calibrate(model, x, y, bins=6)
    assert rel == reliability(predict_proba(model, x), y, bins=6)


def test_svg_parses_with_bars_and_legend(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (200,), generator=gen)
    clean = reliability((4 * torch.randn(200, 4, generator=gen)).softmax(1), y, bins=10)
    attacked = reliability((torch.randn(200, 4, generator=gen)).softmax(1), y, bins=10)
    diagrams = {"clean": clean, "lambda=8 <&> \"x\"": attacked}
    svg = reliability_svg(diagrams, title="SAP & dense <test>")
    root = ET.fromstring(svg)
    assert root.tag == SVG + "svg"
    bars = root.findall(f".//{SVG}rect[@class='bar']")
    assert len(bars) == sum(c > 0 for c in clean.counts) + sum(c > 0 for c in attacked.counts)
    assert {b.get("data-series") for b in bars} == set(diagrams)
    assert not root.findall(f".//{SVG}rect[@class='gap']")  # off by default for several
    legend = " ".join(t.text or "" for t in root.iter(SVG + "text")
                      if t.get("class") == "legend-label")
    assert "clean" in legend and "lambda=8 <&> \"x\"" in legend
    assert f"ECE {100 * clean.ece:.1f}%" in legend
    titles = [t.text for t in root.iter(SVG + "text") if t.get("class") == "title"]
    assert titles == ["SAP & dense <test>"]
    assert root.findall(f".//{SVG}line[@class='diagonal']")

    single = ET.fromstring(reliability_svg(clean))
    filled = sum(c > 0 for c in clean.counts)
    assert len(single.findall(f".//{SVG}rect[@class='bar']")) == filled
    assert len(single.findall(f".//{SVG}rect[@class='gap']")) == filled

    path = save_reliability_svg(tmp_path / "figs" / "rel.svg", diagrams, width=300, height=300)
    assert ET.parse(path).getroot().get("width") == "300"
    with pytest.raises(ConfigError, match="non-empty dict"):
        reliability_svg({})
    with pytest.raises(ConfigError, match="not a Reliability"):
        reliability_svg({"clean": clean.to_dict()})
