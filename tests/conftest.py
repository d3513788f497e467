"""Shared fixtures: small models trained once per test session on real Fashion-MNIST, a
throwaway PostgreSQL server for the results store, and a local HTTP server for downloads."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from torch import nn

from robustact.data import BatchLoader, load_dataset
from robustact.models import create_model


def train_small_cnn(activation: str = "relu", n: int = 4000, epochs: int = 2,
                    seed: int = 0, **act_kwargs: float) -> nn.Module:
    """A small_cnn trained briefly on the first ``n`` Fashion-MNIST training images (CPU)."""
    torch.manual_seed(seed)
    model = create_model("small_cnn", act_layer=activation, act_kwargs=act_kwargs or None)
    data = load_dataset("fashion_mnist", "train").subset(n)
    loader = BatchLoader(data, batch_size=64, shuffle=True, seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


class Affine(nn.Module):
    """logits = W flatten(x) + b."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.flatten(1), self.weight, self.bias)


def fit_on_fashion(model: nn.Module, n: int = 2000, epochs: int = 5,
                   lr: float = 3e-3) -> nn.Module:
    """``model`` trained briefly with Adam on the first ``n`` Fashion-MNIST training images
    (batches of 50, shuffled from the global RNG: seed before building the model); returned
    in eval mode."""
    data = load_dataset("fashion_mnist", "train").subset(n)
    x, y = data.images.float() / 255, data.labels
    opt = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs):
        for batch in torch.randperm(n).split(50):
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def fashion_test(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` Fashion-MNIST test images (float in [0, 1]) and labels."""
    data = load_dataset("fashion_mnist", "test").subset(n)
    return data.images.float() / 255, data.labels


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small models on a shared 2-core machine run many times faster on one intra-op thread;
    a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def relu_cnn() -> nn.Module:
    return train_small_cnn("relu")


@pytest.fixture(scope="session")
def fmnist_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 200 Fashion-MNIST test images (float in [0, 1]) and labels."""
    data = load_dataset("fashion_mnist", "test").subset(200)
    return data.images.float() / 255, data.labels


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of an empty database on a throwaway PostgreSQL server (tools/pg_server.py),
    started for the session and stopped after it. It fails, never skips, when the server
    cannot be started: the PostgreSQL store is part of the default tests."""
    path = Path(__file__).parents[1] / "tools" / "pg_server.py"
    spec = importlib.util.spec_from_file_location("pg_server", path)
    assert spec is not None and spec.loader is not None
    pg_server = importlib.util.module_from_spec(spec)
    sys.modules["pg_server"] = pg_server  # its dataclass looks its module up
    spec.loader.exec_module(pg_server)
    try:
        server = pg_server.start()
    except (pg_server.ServerError, OSError) as exc:
        pytest.fail(f"cannot start the test PostgreSQL server: {exc}; `make postgres` installs "
                    "Debian's postgresql (tools/pg_server.py)", pytrace=False)
    yield server.url
    server.stop()


_DATABASES = itertools.count()


@pytest.fixture
def postgres_database(postgres_url: str) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server, one per test."""
    import psycopg

    name = f"robustact_test_{next(_DATABASES)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return f"{postgres_url.rpartition('/')[0]}/{name}"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served on 127.0.0.1 by a thread; yields (folder, base URL ending in '/')."""
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
