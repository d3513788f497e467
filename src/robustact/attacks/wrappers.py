"""Model wrappers for adaptive attacks: EOT for randomized models, BPDA for layers with useless
gradients. Both are ``nn.Module`` s returning logits, so any attack takes them as the model::

    PGD(eps=8 / 255)(EOT(model, n=32), x, y)     # gradient and prediction averaged over 32 draws
    PGD(eps=8 / 255)(BPDA(kwta_model), x, y)     # k-WTA layers differentiated through a surrogate
    PGD(eps=8 / 255)(EOT(BPDA(model)), x, y)     # both (put BPDA inside EOT)

The attack judges success on the wrapper's output, i.e. on the averaged prediction for EOT
(as REFERENCE section 5 asks), not on one lucky forward pass. The attack's query counter counts
one query per EOT forward; the model itself runs ``n`` times. The gradient an attack follows
through EOT is :meth:`EOT.loss_gradient`'s: the mean over the draws of each draw's loss
gradient, back-propagated chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as _checkpoint

from robustact.attacks.losses import LossFn
from robustact.errors import ConfigError

# Images per model forward unless max_batch is given. On a CPU very large batches are slower per
# image (tensors over glibc's 32 MiB mmap threshold are page-faulted in afresh at every call
# unless robustact.device.tune_cpu_allocator ran, and fall out of the L3 cache): a small_cnn
# forward+backward measured 0.55-0.65 ms per image at batch 128-256 and 0.8-1.4 ms at batch 2048
# on a 2-core machine. With the allocator tuned (the command line and the benchmarks): small_cnn
# 0.51 ms at 128, 0.41 at 256, 0.40 at 512; with SAP-100 2.1, 1.96, 1.97; resnet20 + SAP-100 9.9
# at 128, 8.9 at 256. GPUs want big batches.
DEFAULT_MAX_BATCH = {"cpu": 256}
DEFAULT_MAX_BATCH_ACCELERATOR = 4096
# Budget for the activations EOT keeps for backward when memory_bytes is not given.
DEFAULT_MEMORY_BYTES = 2 << 30
REDUCTIONS = ("logits", "probs")


class EOT(nn.Module):
    """Expectation over transformation: the mean output of ``n`` stochastic forwards of ``model``.

    The input batch (B, ...) is replicated ``n`` times along the batch dimension and run through
    the model in as few forwards as possible, each with at most ``max_batch`` images (one forward
    of n*B images in the common case, not a Python loop over n); the (n, B, K) outputs are then
    averaged over the n copies. The average is differentiable, so autograd gives the gradient of
    the averaged output (= the average of the n per-draw gradients). Attacks run the model in
    eval mode, so BatchNorm uses its running statistics and replication changes nothing there;
    only genuinely random layers (noise, dropout kept active, SAP...) differ between copies.

    Attacks take their gradient from :meth:`loss_gradient` instead (``Attack.input_gradient``
    calls it): the EOT gradient of Athalye et al. 2018, the mean of the n draws' loss gradients,
    back-propagated chunk by chunk as the chunks are computed, so only one chunk's activations
    are alive and nothing is recomputed.

    Args:
        model: returns logits (B, K) for inputs in [0, 1].
        n: number of draws averaged.
        max_batch: most images per model forward (default 256 on CPU, 4096 on accelerators),
            also capped by ``memory_bytes``. Chunks are slices of the replicated batch, so a
            model drawing its noise with ``torch.rand*`` sees the same stream either way.
        memory_bytes: budget for the activations kept for backward (default 2 GiB). Their size
            is estimated as the summed output size of all leaf modules for one image, measured
            once per input shape with a probe forward of one image (under a forked RNG, so
            the draws of the real forwards are unchanged). A chunk never exceeds the budget;
            when all n*B images together would, and a gradient is needed, chunks are
            recomputed in backward (see ``checkpoint``).
        reduce: "logits" (default): the mean of the logits. "probs": the log of the mean softmax
            probability, ``log(1/n sum_i softmax(z_i))``, computed stably with logsumexp; its
            argmax is the class of highest mean probability and cross-entropy on it is the
            cross-entropy of the averaged prediction (the usual way to score a randomized
            classifier, e.g. SAP's averaged outputs).
        checkpoint: for a gradient of the output itself (autograd through ``forward``, not
            :meth:`loss_gradient`), recompute each chunk's forward during backward
            (``torch.utils.checkpoint`` with the RNG state preserved, so the recomputed draws
            are the same) instead of keeping every chunk's activations: memory stays at one
            chunk, for one extra forward. None (default): only when the n*B images'
            activations exceed ``memory_bytes``; True: whenever there is more than one chunk;
            False: never.

    Attributes: ``n``, ``reduce``, ``max_batch``, ``randomized = True``.
    """

    randomized = True

    def __init__(self, model: nn.Module, n: int = 32, *, max_batch: int | None = None,
                 memory_bytes: int | None = None, reduce: str = "logits",
                 checkpoint: bool | None = None) -> None:
        super().__init__()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"EOT: n must be a positive integer, got {n!r}")
        if max_batch is not None and (isinstance(max_batch, bool) or int(max_batch) < 1):
            raise ConfigError(f"EOT: max_batch must be a positive integer, got {max_batch!r}")
        if memory_bytes is not None and memory_bytes <= 0:
            raise ConfigError(f"EOT: memory_bytes must be > 0, got {memory_bytes!r}")
        if reduce not in REDUCTIONS:
            raise ConfigError(f"EOT: reduce must be logits or probs, got {reduce!r}")
        self.model = model
        self.train(model.training)  # see BPDA.__init__
        self.n = n
        self.max_batch = None if max_batch is None else int(max_batch)
        self.memory_bytes = memory_bytes
        self.reduce = reduce
        self.checkpoint = checkpoint
        self._image_bytes: dict[tuple[Any, ...], int] = {}
        self._no_checkpoint = False  # set by BPDA around its forward (see BPDA.forward)

    def extra_repr(self) -> str:
        return f"n={self.n}, reduce={self.reduce}, max_batch={self.max_batch}"

    def chunk_size(self, x: torch.Tensor) -> int:
        """Images per model forward for inputs shaped like ``x``."""
        cap = self.max_batch or DEFAULT_MAX_BATCH.get(x.device.type,
                                                      DEFAULT_MAX_BATCH_ACCELERATOR)
        if self.memory_bytes is None and self.n * x.shape[0] <= cap:
            return cap  # one forward; no need to probe the activation size
        return max(1, min(cap, self._budget() // self._per_image_bytes(x)))

    def draws_per_forward(self, x: torch.Tensor) -> int:
        """Draws of inputs shaped like ``x`` that :meth:`loss_gradient` stacks in one forward.

        Several fill a forward when one draw's batch is small; once one draw fills a quarter
        of :meth:`chunk_size`, stacking more only makes bigger tensors (on a CPU, 4 draws of
        64 images per forward ran at 0.96-0.99 of the speed of a loop over the draws)."""
        cap, batch = self.chunk_size(x), max(x.shape[0], 1)
        return 1 if batch * 4 >= cap else max(1, cap // batch)

    def _budget(self) -> int:
        return DEFAULT_MEMORY_BYTES if self.memory_bytes is None else int(self.memory_bytes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        total = self.n * batch
        cap = self.chunk_size(x)
        if total <= cap:
            out = self.model(x.repeat(self.n, *([1] * (x.dim() - 1))))
        else:
            recompute = (self.checkpoint is not False and not self._no_checkpoint
                         and torch.is_grad_enabled()
                         and (x.requires_grad or any(p.requires_grad
                                                     for p in self.model.parameters()))
                         and (self.checkpoint
                              or total * self._per_image_bytes(x) > self._budget()))
            index = torch.arange(total, device=x.device) % batch
            outs = []
            for lo in range(0, total, cap):
                chunk = x.index_select(0, index[lo:lo + cap])
                if recompute:
                    outs.append(_checkpoint(self.model, chunk, use_reentrant=False,
                                            preserve_rng_state=True))
                else:
                    outs.append(self.model(chunk))
            out = torch.cat(outs)
        return self._reduce(out.view(self.n, batch, *out.shape[1:]))

    def _reduce(self, draws: torch.Tensor) -> torch.Tensor:
        """The EOT output from the (n, B, K) outputs of the draws."""
        if self.reduce == "logits":
            return draws.mean(0)
        return torch.logsumexp(torch.log_softmax(draws, dim=-1), dim=0) - math.log(self.n)

    def loss_gradient(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What an attack needs at ``x``: (loss (B,), gradient (B, ...), output (B, K)).

        The gradient is the EOT gradient, ``grad_x 1/n sum_i loss_fn(model_i(x), y).sum()`` over
        the n draws ``model_i`` (Athalye et al. 2018; AutoAttack's rand version averages the
        same way): the loss is taken per draw, on that draw's (B, K) output, so ``loss_fn`` may
        hold per-example tensors (a targeted loss's classes). Each chunk of whole draws
        (``max_batch`` // B of them; one when B is a quarter of ``max_batch`` or more) is run
        forward and back-propagated at once, and its gradient added up: one chunk's
        activations are alive at a time and none is recomputed. The returned output
        (detached) is :meth:`forward`'s reduction of these same draws, and the loss is
        ``loss_fn`` of it: the prediction the attack judges.
        """
        batch = x.shape[0]
        per_chunk = self.draws_per_forward(x)
        grad = torch.zeros_like(x)
        outs = []
        for first in range(0, self.n, per_chunk):
            draws = min(per_chunk, self.n - first)
            chunk = x.detach().repeat(draws, *([1] * (x.dim() - 1))).requires_grad_(True)
            with torch.enable_grad():
                out = self.model(chunk)
                per_draw = out.view(draws, batch, *out.shape[1:])
                loss = sum(loss_fn(per_draw[i], y).sum() for i in range(draws))
                (chunk_grad,) = torch.autograd.grad(loss, chunk)
            grad += chunk_grad.view(draws, *x.shape).sum(0)
            outs.append(per_draw.detach())
        logits = self._reduce(torch.cat(outs))
        return loss_fn(logits, y).detach(), grad / self.n, logits

    def _per_image_bytes(self, x: torch.Tensor) -> int:
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key not in self._image_bytes:
            total = [x[:1].numel() * x.element_size()]

            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                if isinstance(output, torch.Tensor):
                    total[0] += output.numel() * output.element_size()

            handles = [m.register_forward_hook(hook) for m in self.model.modules()
                       if not any(True for _ in m.children())]
            accel = x.device.type != "cpu"
            fork = torch.random.fork_rng(devices=[x.device] if accel else [],
                                         device_type=x.device.type if accel else "cuda")
            try:  # forked RNG: the probe does not shift the draws of the real forwards
                with torch.no_grad(), fork:
                    self.model(x[:1])
            finally:
                for handle in handles:
                    handle.remove()
            self._image_bytes[key] = max(1, total[0])
        return self._image_bytes[key]


def is_randomized(model: nn.Module, x: torch.Tensor, trials: int = 2) -> bool:
    """Whether ``model`` gives different outputs for the same input across ``trials`` forwards
    in eval mode (no grad; the model's train/eval mode is restored). Used by the diagnostics to
    decide whether an evaluation needs EOT."""
    if trials < 2:
        raise ConfigError(f"is_randomized: trials must be >= 2, got {trials}")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            first = model(x)
            for _ in range(trials - 1):
                if not torch.equal(model(x), first):
                    return True
        return False
    finally:
        model.train(was_training)


class BPDA(nn.Module):
    """Backward Pass Differentiable Approximation (Athalye, Carlini, Wagner 2018).

    The forward is exactly ``model``'s. On the backward pass, every sub-module (``model`` itself
    included) that declares a surrogate, a method ``bpda_surrogate(self, x) -> Tensor``
    differentiable with the module's output shape, is differentiated through the surrogate
    instead: its output becomes ``layer(x) + (s - s.detach())`` with ``s = surrogate(x)``, whose
    value is bit-for-bit the layer's (``s - s.detach()`` is exactly 0) and whose gradient is the
    surrogate's (the straight-through trick ``s + (layer(x) - s).detach()``, without its rounding).
    The layer itself runs under ``no_grad``. The substitution is installed by temporarily
    replacing the modules' ``forward`` only for the duration of this wrapper's forward, and
    removed afterwards, also when the forward raises: the wrapped model is unchanged after use.
    Without a declaring module BPDA is the identity wrapper (its gradient is the plain one).

    Attributes: ``layers``, the names (in ``model.named_modules()``; "" for ``model`` itself) of
    the modules substituted, refreshed at each forward.

    Combine with EOT as ``EOT(BPDA(model))``: attacks then take EOT's chunked gradient
    (:meth:`EOT.loss_gradient`) through the surrogates, which also apply when EOT recomputes a
    chunk during backward. (``BPDA(EOT(model))`` is differentiated through EOT's output, and
    BPDA turns EOT's checkpointing off while it runs, since a recomputation after BPDA's
    forward would miss the surrogates.)
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # a wrapper takes the mode of what it wraps: a fresh module is in training mode, and
        # restoring that mode after an attack would switch the wrapped model to training
        self.train(model.training)
        self.layers = self._declaring()

    def _declaring(self) -> list[str]:
        return [name for name, module in self.model.named_modules()
                if callable(getattr(module, "bpda_surrogate", None))]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.layers = self._declaring()
        if not self.layers or not torch.is_grad_enabled():
            return self.model(*args, **kwargs)
        with self._substituted():
            return self.model(*args, **kwargs)

    @contextmanager
    def _substituted(self) -> Iterator[None]:
        modules = dict(self.model.named_modules())
        saved: list[tuple[nn.Module, Any]] = []
        eots = [m for m in self.model.modules() if isinstance(m, EOT) and not m._no_checkpoint]
        try:
            for eot in eots:
                eot._no_checkpoint = True
            for name in self.layers:
                module = modules[name]
                # an instance attribute ``forward`` (if any) is restored; else the class's is used
                saved.append((module, module.__dict__.get("forward", _MISSING)))
                module.forward = _surrogate_forward(module, module.forward)
            yield
        finally:
            for module, previous in reversed(saved):
                if previous is _MISSING:
                    del module.forward
                else:
                    module.forward = previous
            for eot in eots:
                eot._no_checkpoint = False


_MISSING = object()


def _surrogate_forward(module: nn.Module, forward: Any) -> Any:
    def substituted(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.no_grad():
            value = forward(x, *args, **kwargs)
        if not torch.is_grad_enabled():
            return value
        surrogate = module.bpda_surrogate(x)
        if surrogate.shape != value.shape:
            raise ConfigError(
                f"BPDA: {type(module).__name__}.bpda_surrogate returned shape "
                f"{tuple(surrogate.shape)}, the layer {tuple(value.shape)}"
            )
        return value + (surrogate - surrogate.detach())

    return substituted
