"""FAB against torchattacks' FAB on a tiny trained model, its hyperplane-box projection against
linear programs and closed forms, and its invariants (box, ball, queries, settings)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linprog, minimize
from torch import nn

from conftest import Affine
from robustact.attacks.fab import FAB, hyperplane_box_step
from robustact.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

TORCHATTACKS_NORM = {"linf": "Linf", "l2": "L2", "l1": "L1"}
#: an eps no perturbation in [0, 1]^36 exceeds: FAB unbounded in effect
HUGE_EPS = {"linf": 1.0, "l2": 6.0, "l1": 36.0}

# ---- a tiny model on a synthetic 10-class problem ---------------------------------------------


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy copies of 10 fixed class prototypes, images (n, 1, 6, 6) in [0, 1]."""
    protos = 0.2 + 0.6 * torch.rand(10, 1, 6, 6, generator=torch.Generator().manual_seed(123))
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=gen)
    return (protos[y] + 0.35 * torch.randn(n, 1, 6, 6, generator=gen)).clamp(0, 1), y


@pytest.fixture(scope="module")
def problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained briefly (about 80% test accuracy, so some clean errors) and 64 test points."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = synthetic(2000, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        batch = torch.randint(0, 2000, (128,))
        opt.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    x_test, y_test = synthetic(64, 2)
    return model.eval(), x_test, y_test


def norm_of(delta: torch.Tensor, norm: str) -> torch.Tensor:
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(1)
    return flat.norm(dim=1) if norm == "l2" else flat.abs().sum(1)


def fooled(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


# ---- against torchattacks ---------------------------------------------------------------------


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_matches_torchattacks(problem: tuple, norm: str, targeted: bool) -> None:
    """Minimal norms (huge eps) and robust accuracy at their median agree with torchattacks'
    FAB (FAB-T: its multi_targeted mode, 9 target ranks) with the same settings."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = problem
    correct = ~fooled(model, x, y)
    assert 0.7 <= correct.float().mean() < 1.0

    def theirs(eps: float) -> torch.Tensor:
        return torchattacks.FAB(model, norm=TORCHATTACKS_NORM[norm], eps=eps, steps=50,
                                multi_targeted=targeted, n_classes=10)(x, y)

    attack = FAB(eps=HUGE_EPS[norm], norm=norm, steps=50, targeted=targeted)
    result = attack(model, x, y)
    ours = result.norms  # minimal norms: this eps never bounds
    assert result.success.all()
    assert torch.equal(ours == 0, ~correct)  # clean errors: norm 0
    adv = theirs(HUGE_EPS[norm])
    assert fooled(model, adv, y).all()
    theirs_norms = norm_of(adv - x, norm)
    ratio = ours[correct] / theirs_norms[correct]
    close = ((ratio - 1).abs() <= 0.01).float().mean().item()
    median_ratio = float(ours[correct].median() / theirs_norms[correct].median())
    eps = float(theirs_norms[correct].median())
    ours_acc = FAB(eps=eps, norm=norm, steps=50, targeted=targeted)(model, x, y).robust_accuracy
    theirs_acc = 1 - fooled(model, theirs(eps), y).float().mean().item()
    print(f"\nfab {norm} targeted={targeted}: median min norm ours {ours[correct].median():.4f} "
          f"torchattacks {eps:.4f} (ratio {median_ratio:.4f}), {close:.0%} of points within 1%; "
          f"robust accuracy at eps {eps:.4f}: ours {ours_acc:.3f}, torchattacks {theirs_acc:.3f}")
    assert abs(median_ratio - 1) <= 0.05
    assert close >= 0.8
    assert abs(ours_acc - theirs_acc) <= 3 / 64  # at most 3 of the 64 points differ
    assert 0.2 <= ours_acc <= 0.8  # the eps is informative


@pytest.mark.parametrize("targeted", [False, True])
def test_fab_l1_matches_a_torchattacks_single_run(problem: tuple, targeted: bool) -> None:
    """torchattacks 3.5's FAB.perturb fails for L1 (no L1 branch in its eps check), so compare
    with one of its runs from x (FAB-T: the top wrong class, our n_target_classes=1)."""
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = problem
    correct = ~fooled(model, x, y)
    attack = FAB(eps=HUGE_EPS["l1"], norm="l1", steps=100, targeted=targeted, n_target_classes=1)
    result = attack(model, x, y)
    ours = result.norms
    assert result.success.all()
    reference = torchattacks.FAB(model, norm="L1", eps=HUGE_EPS["l1"], steps=100,
                                 multi_targeted=targeted, n_classes=10)
    reference.target_class = 2  # the rank of the target among all clean logits
    with torch.no_grad():
        adv = (reference.attack_single_run_targeted(x, y) if targeted
               else reference.attack_single_run(x, y))
    assert fooled(model, adv, y).all()
    theirs = norm_of(adv - x, "l1")
    ratio = ours[correct] / theirs[correct]
    median_ratio = float(ours[correct].median() / theirs[correct].median())
    print(f"\nfab l1 targeted={targeted}: median min norm ours {ours[correct].median():.4f} "
          f"torchattacks {theirs[correct].median():.4f} (ratio {median_ratio:.4f}), "
          f"{((ratio - 1).abs() <= 0.01).float().mean():.0%} of points within 1%")
    assert abs(median_ratio - 1) <= 0.05
    assert ((ratio - 1).abs() <= 0.01).float().mean() >= 0.8


# ---- invariants ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.25), ("l1", 0.6)])
def test_fab_outputs_stay_in_the_box_and_the_ball(problem: tuple, norm: str, eps: float) -> None:
    model, x, y = problem
    attack = FAB(eps=eps, norm=norm, steps=30, restarts=2, batch_size=24)
    result = attack(model, x, y)
    size = norm_of(result.x_adv - x, norm)
    assert (size <= eps + 1e-6).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert torch.equal(result.success, fooled(model, result.x_adv, y))
    # an adversarial within eps is returned; otherwise the clean point
    moved = (result.x_adv != x).flatten(1).any(1)
    assert torch.equal(result.success, moved | fooled(model, x, y))
    assert 0.1 < result.robust_accuracy < 0.9
    assert len(result.loss_trace) == 3 * 30  # three batches, the first restart of each
    print(f"\nfab {norm} eps {eps}: robust accuracy {result.robust_accuracy:.3f}")


def affine_distances(norm: str) -> tuple[Affine, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An affine 5-class model, 40 inputs in [0.4, 0.6] labelled with its predictions, and the
    exact distance (40, 4) to the boundary of the label with each wrong class, highest clean
    logit first: |f_k - f_y| / ||w_k - w_y||_dual (the box is not active at the nearest one)."""
    gen = torch.Generator().manual_seed(0)
    x = 0.4 + 0.2 * torch.rand(40, 1, 4, 4, generator=gen)
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0])[:, None]  # the top logit is not always nearest
    model = Affine(torch.randn(5, 16, generator=gen) * scale, torch.randn(5, generator=gen))
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)
    ranked = logits.scatter(1, y[:, None], -math.inf).argsort(1, descending=True)[:, :4]
    gaps = (logits.gather(1, y[:, None]) - logits.gather(1, ranked)).detach()
    normals = (model.weight[ranked] - model.weight[y][:, None]).detach()
    dual = normals.abs().sum(2) if norm == "linf" else normals.norm(dim=2)
    return model, x, y, gaps / dual


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_exact_distance_of_an_affine_model(norm: str) -> None:
    model, x, y, distances = affine_distances(norm)
    assert distances.amin(1).max() < (0.1 if norm == "linf" else 0.3)
    result = FAB(eps=1.0, norm=norm, steps=20)(model, x, y)
    assert result.success.all()
    ratio = result.norms / distances.amin(1)
    print(f"\nfab {norm} affine: min norm / exact distance in [{ratio.min():.5f}, "
          f"{ratio.max():.5f}]")
    assert (ratio >= 1 - 1e-4).all() and (ratio <= 1.01).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_targeted_runs_each_rank_on_the_points_left(norm: str) -> None:
    """FAB-T with R ranks breaks a point iff one of its R highest wrong classes has a boundary
    within eps; the points the first rank breaks cost one run's queries, the others more."""
    model, x, y, distances = affine_distances(norm)
    eps = float(distances[:, 0].quantile(0.3))
    steps = 15
    run = 3 + 2 * steps  # the schedule's and the rank's clean forwards, the run, the judgement
    for ranks in (1, 2, 4):
        result = FAB(eps=eps, norm=norm, steps=steps, targeted=True,
                     n_target_classes=ranks)(model, x, y)
        nearest = distances[:, :ranks].amin(1)
        clear = ((nearest / eps) - 1).abs() > 0.02  # not within FAB's accuracy of eps
        assert clear.sum() >= 30
        assert torch.equal(result.success[clear], (nearest <= eps)[clear])
        first = distances[:, 0] < 0.98 * eps  # broken by the first rank
        later = distances[:, 0] > 1.02 * eps  # left to the later ranks
        assert (result.queries[first] == run).all()
        assert (result.queries[later] > run).all() if ranks > 1 else \
            (result.queries[later] == run).all()
    assert (distances[:, 1:].amin(1) < distances[:, 0]).any()  # later ranks can matter


def test_fab_query_counts_trace_and_gradient_health(problem: tuple) -> None:
    model, x, y = problem
    result = FAB(eps=0.03, steps=7, batch_size=40)(model, x, y)
    correct = ~fooled(model, x, y)
    # 1 clean forward, 2 per iteration, 1 for the base's judgement; clean errors skip the runs
    assert (result.queries > 0).all()
    assert torch.equal(result.queries, torch.where(correct, 2 + 2 * 7, 2))
    assert len(result.loss_trace) == 2 * 7  # one run per batch, two batches
    assert all(v <= 0 for v in result.loss_trace)
    assert result.grad_bad_fraction is not None and 0 <= result.grad_bad_fraction < 0.5


def test_fab_perturb_path_for_training(problem: tuple) -> None:
    model, x, y = problem
    adv = FAB(eps=0.05, steps=10).perturb(model, x, y)
    assert adv.min() >= 0 and adv.max() <= 1
    assert (norm_of(adv - x, "linf") <= 0.05 + 1e-6).all()
    assert fooled(model, adv, y).sum() > fooled(model, x, y).sum()


def test_fab_rejects_bad_settings() -> None:
    bad = [({"steps": 0}, "steps must be an integer >= 1"),
           ({"restarts": 2.5}, "restarts must be an integer >= 1"),
           ({"alpha_max": 1.5}, r"alpha_max must be in \[0, 1\]"),
           ({"eta": 0.9}, r"eta \(overshoot\) must be >= 1"),
           ({"beta": 1.0}, r"beta must be in \(0, 1\)"),
           ({"targeted": "yes"}, "targeted must be true or false"),
           ({"n_target_classes": 0}, "n_target_classes must be an integer >= 1"),
           ({"norm": "l3"}, "norm must be linf or l2 or l1"),
           ({"eps": -0.1}, "eps must be a number >= 0")]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=f"^fab: {message}"):
            FAB(**{"eps": 0.1, **kwargs})
    one_class = nn.Sequential(nn.Flatten(), nn.Linear(4, 1))
    with pytest.raises(ConfigError, match="at least 2 classes"):
        FAB(eps=0.1)(one_class, torch.rand(3, 1, 2, 2), torch.zeros(3, dtype=torch.long))
    assert FAB(eps=0.1, norm="l1", targeted=True).hyperparameters() == {
        "eps": 0.1, "norm": "l1", "steps": 100, "restarts": 1, "alpha_max": 0.1, "eta": 1.05,
        "beta": 0.9, "targeted": True, "n_target_classes": 9}
    assert "n_target_classes" not in FAB(eps=0.1).hyperparameters()


# ---- the hyperplane-box projection --------------------------------------------------------------


def random_planes(rows: int, d: int, seed: int, spread: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points in [0, 1]^d, normals (some coordinates 0) and offsets <w, t> - b (float64)."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.rand(rows, d, generator=gen, dtype=torch.float64)
    w = torch.randn(rows, d, generator=gen, dtype=torch.float64)
    w[:, 0] *= torch.rand(rows, generator=gen) > 0.3
    return t, w, spread * torch.randn(rows, generator=gen, dtype=torch.float64)


def lp_minimal_norm(t: np.ndarray, w: np.ndarray, offset: float, norm: str) -> float:
    """min ||delta|| (L-inf or L1) s.t. <w, delta> = -offset, t + delta in [0, 1]^d, by scipy's
    LP solver; nan if infeasible."""
    d = len(t)
    if norm == "linf":  # variables (delta, s): min s, -s <= delta_i <= s
        res = linprog(np.r_[np.zeros(d), 1.0],
                      A_ub=np.block([[np.eye(d), -np.ones((d, 1))],
                                     [-np.eye(d), -np.ones((d, 1))]]),
                      b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None], b_eq=[-offset],
                      bounds=[(-v, 1 - v) for v in t] + [(0, None)])
    else:  # delta = up - down, both >= 0: min sum(up + down)
        res = linprog(np.ones(2 * d), A_eq=np.r_[w, -w][None], b_eq=[-offset],
                      bounds=[(0, 1 - v) for v in t] + [(0, v) for v in t])
    return res.fun if res.status == 0 else math.nan


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_hyperplane_box_step_solves_the_linear_program(norm: str) -> None:
    t, w, offset = random_planes(60, 6, seed=1, spread=1.5)
    step = hyperplane_box_step(t, w, offset, norm)
    assert (t + step).min() >= 0 and (t + step).max() <= 1
    expected = torch.tensor([lp_minimal_norm(t[i].numpy(), w[i].numpy(), offset[i].item(), norm)
                             for i in range(len(t))], dtype=torch.float64)
    feasible = ~expected.isnan()
    assert 5 <= (~feasible).sum() <= 55  # both kinds of rows occur
    on_plane = ((w * step).sum(1) + offset).abs() < 1e-9
    assert torch.equal(on_plane, feasible)
    assert torch.allclose(norm_of(step, norm)[feasible], expected[feasible], atol=1e-9)
    # where the box cannot reach the plane: the corner nearest it (each coordinate at the face
    # that moves <w, z> towards the plane; coordinates with w_i = 0 stay)
    corner = torch.where(w * offset[:, None] < 0, 1 - t, -t) * (w != 0)
    assert torch.allclose(step[~feasible], corner[~feasible])


def test_hyperplane_box_step_l2_is_the_euclidean_projection() -> None:
    # box not active: points in the middle, planes near them: delta = -offset w / ||w||^2
    t, w, offset = random_planes(30, 20, seed=2, spread=0.05)
    t = 0.4 + 0.2 * t
    step = hyperplane_box_step(t, w, offset, "l2")
    closed = -offset[:, None] * w / (w * w).sum(1, keepdim=True)
    assert ((t + closed) > 0).all() and ((t + closed) < 1).all()
    assert torch.allclose(step, closed, atol=1e-12)
    # box active: against scipy's SLSQP on the constrained least-squares problem
    t, w, offset = random_planes(20, 6, seed=3, spread=0.6)
    step = hyperplane_box_step(t, w, offset, "l2")
    clipped = 0
    for i in range(len(t)):
        ti, wi, ci = t[i].numpy(), w[i].numpy(), offset[i].item()
        res = minimize(lambda z: float(z @ z), np.zeros(6), jac=lambda z: 2 * z, method="SLSQP",
                       bounds=[(-v, 1 - v) for v in ti],
                       constraints=[{"type": "eq", "fun": lambda z, wi=wi, ci=ci: wi @ z + ci}],
                       options={"ftol": 1e-14, "maxiter": 500})
        if not (res.success and abs(wi @ res.x + ci) < 1e-8):
            continue  # infeasible row (checked in the LP test)
        assert np.allclose(step[i].numpy(), res.x, atol=1e-5)
        clipped += bool(((t[i] + step[i] == 0) | (t[i] + step[i] == 1)).any())
    assert clipped >= 3  # the box was active in some rows


def test_hyperplane_box_step_is_zero_on_the_plane_and_for_flat_normals() -> None:
    t = torch.rand(4, 5, dtype=torch.float64)
    w = torch.randn(4, 5, dtype=torch.float64)
    w[3] = 0
    offset = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    for norm in ("linf", "l2", "l1"):
        step = hyperplane_box_step(t, w, offset, norm)
        assert torch.isfinite(step).all() and torch.equal(step, torch.zeros_like(step))
