"""DSU-style perturbation of feature statistics, a simulated unseen domain (Eq. 6, method.md §4)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from fishertune.process_group import world_size
from fishertune.sensitivity._common import global_share
from fishertune.sensitivity.dr_fim import shift_coefficient

Offsets = tuple[Tensor, Tensor]
"""Per-call additive offsets ``(a, b)`` of shape ``(B, C)``: α = μ + a and β = σ + b."""


class FeaturePerturbation:
    """Perturb the per-sample feature statistics of module outputs while the context is active.

    For an output ``z`` of one of the given modules, per sample ``b`` and channel ``c``
    (method.md §4, paper Eq. 6)::

        μ_bc, σ_bc = mean and std of z over tokens / spatial positions (σ = sqrt(var + eps))
        Σ_μ,c, Σ_σ,c = sqrt(variance over the batch of μ_·c and σ_·c + eps)
        α = μ + ε_μ ⊙ Σ_μ,   β = σ + ε_σ ⊙ Σ_σ,   ε ~ N(0, s²) per (b, c)
        z' = β ⊙ (z − μ) / σ + α

    Token sequences ``(B, N, C)`` and feature maps ``(B, C, H, W)`` are supported. As DSU's
    module (Li et al., ICLR 2022): the spread over the batch is the unbiased variance with
    ``eps`` added inside the square root, and, when used as a training augmentation
    (``probability=0.5, training_only=True``, what ``train_perturbation`` does), each forward
    call is perturbed with that probability and only while the module is in training mode.
    Departures, where the paper is silent: the per-sample variance over tokens is the
    population variance (DSU's is unbiased; with hundreds of tokens the two differ by under
    1%); Σ_μ, Σ_σ and the noise are constants of the simulated domain (detached, DSU lets
    gradients flow through them), so every sample's perturbed output depends on its own
    features only and per-sample gradients are well defined. The estimation stage perturbs
    every call (``probability=1``), in any mode: there it defines the simulated domain. The
    first ``num_prefix_tokens`` tokens of a sequence (class / register tokens) are left
    untouched and excluded from the statistics.

    Args:
        modules: one module or several; each one's output is perturbed.
        scale: s_μ, the "domain shift control factor" of the mean noise.
        generator: draws the noise ε; seed it for reproducible perturbations.
        scale_sigma: s_σ for the std noise (defaults to ``scale``).
        eps: added to the variances (per sample and over the batch) before the square root.
        probability: chance that one forward call is perturbed (drawn from ``generator``).
        training_only: leave calls alone while the module is in evaluation mode.
        num_prefix_tokens: leading tokens of ``(B, N, C)`` outputs kept unchanged.
        channels_last: 4-D outputs are ``(B, H, W, C)`` maps (SAM's blocks), not ``(B, C, H, W)``.
        across_processes: under ``torch.distributed``, the batch is the union of every
            process's micro-batch: the spread Σ is computed over all of them (so one sample
            per process works) and the noise of the whole batch is drawn on rank 0 and each
            process takes its samples' rows, as one process would draw it; every process must
            then make the same perturbed calls (the staged trainer's do). Without a process
            group it changes nothing.
    """

    def __init__(
        self,
        modules: nn.Module | Iterable[nn.Module],
        scale: float = 1.0,
        generator: torch.Generator | None = None,
        *,
        scale_sigma: float | None = None,
        eps: float = 1e-6,
        num_prefix_tokens: int = 0,
        channels_last: bool = False,
        probability: float = 1.0,
        training_only: bool = False,
        across_processes: bool = False,
    ) -> None:
        self.modules: list[nn.Module] = (
            [modules] if isinstance(modules, nn.Module) else list(modules)
        )
        if not self.modules:
            raise ValueError("FeaturePerturbation needs at least one module to perturb")
        for name, value in (("scale", scale), ("scale_sigma", scale_sigma)):
            if value is not None and value < 0:
                raise ValueError(f"FeaturePerturbation: {name} must be >= 0, got {value}")
        if num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(
                f"FeaturePerturbation: probability must be in [0, 1], got {probability}"
            )
        self.scale_mu = float(scale)
        self.scale_sigma = float(scale if scale_sigma is None else scale_sigma)
        self.generator = generator
        self.eps = eps
        self.num_prefix_tokens = num_prefix_tokens
        self.channels_last = channels_last
        self.probability = probability
        self.training_only = training_only
        self.across_processes = across_processes
        self._handles: list[RemovableHandle] = []
        self._record: list[Offsets] | None = None
        self._replay: Sequence[Offsets] | None = None
        self._replay_position = 0

    @property
    def coef(self) -> float:
        """c = exp(−(s_μ + s_σ)), the weight of ΔF in the DR-FIM (method.md §5)."""
        return shift_coefficient(self.scale_mu, self.scale_sigma)

    @property
    def active(self) -> bool:
        """Whether the hooks are installed."""
        return bool(self._handles)

    def __enter__(self) -> FeaturePerturbation:
        if self._handles:
            raise RuntimeError("FeaturePerturbation is already active (contexts do not nest)")
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def record_offsets(self) -> Iterator[list[Offsets]]:
        """Collect the offsets drawn by every perturbed call inside the block, in call order."""
        self._record = []
        try:
            yield self._record
        finally:
            self._record = None

    @contextmanager
    def use_offsets(self, offsets: Sequence[Offsets]) -> Iterator[None]:
        """Replay previously recorded offsets instead of drawing new ones.

        ``offsets`` holds one ``(a, b)`` pair per perturbed call, each ``(B, C)`` or ``(C,)``.
        Used to evaluate single samples (or ``vmap``-ed samples) under exactly the
        perturbation drawn for their whole batch.
        """
        self._replay, self._replay_position = offsets, 0
        try:
            yield
        finally:
            self._replay, self._replay_position = None, 0

    def _world(self) -> int:
        """The number of processes sharing the batch (1 unless ``across_processes``)."""
        return world_size() if self.across_processes else 1

    def _draw_across(self, mu: Tensor, sigma: Tensor) -> Offsets:
        """Offsets of this process's samples when the batch spans every process: the spread
        from all-reduced sums (float64), the noise of the whole batch from rank 0."""
        share = global_share(mu.shape[0], mu.device)
        assert share is not None
        total, first = share
        if total < 2:
            raise ValueError(
                "FeaturePerturbation needs a batch of at least 2 samples over all processes "
                f"to estimate the spread of feature statistics, got {total}"
            )
        stats = [v.detach().double() for v in (mu, sigma)]
        moments = torch.stack([t for v in stats for t in (v.sum(0), v.square().sum(0))])
        dist.all_reduce(moments)
        spreads = [
            ((moments[2 * i + 1] - moments[2 * i].square() / total) / (total - 1))
            .clamp_min(0.0)
            .add(self.eps)
            .sqrt()
            .to(mu.dtype)
            for i in range(2)
        ]
        channels = mu.shape[1]
        noise = torch.empty((2, total, channels), dtype=mu.dtype, device=mu.device)
        if dist.get_rank() == 0:
            device = self.generator.device if self.generator is not None else mu.device
            drawn = torch.randn((2, total, channels), generator=self.generator, device=device)
            noise.copy_(drawn)
        dist.broadcast(noise, src=0)
        mine = noise[:, first : first + mu.shape[0]]
        return mine[0] * self.scale_mu * spreads[0], mine[1] * self.scale_sigma * spreads[1]

    def _draw(self, mu: Tensor, sigma: Tensor) -> Offsets:
        if self._world() > 1:
            return self._draw_across(mu, sigma)
        batch = mu.shape[0]
        if batch < 2:
            raise ValueError(
                "FeaturePerturbation needs a batch of at least 2 samples to estimate the "
                f"spread of feature statistics, got batch size {batch}"
            )
        spread_mu = (mu.detach().var(dim=0) + self.eps).sqrt()
        spread_sigma = (sigma.detach().var(dim=0) + self.eps).sqrt()
        device = self.generator.device if self.generator is not None else mu.device
        noise = torch.randn((2, *mu.shape), generator=self.generator, device=device)
        noise = noise.to(device=mu.device, dtype=mu.dtype)
        return noise[0] * self.scale_mu * spread_mu, noise[1] * self.scale_sigma * spread_sigma

    def _next_offsets(self, mu: Tensor, sigma: Tensor) -> Offsets:
        if self._replay is not None:
            if self._replay_position >= len(self._replay):
                raise RuntimeError(
                    "FeaturePerturbation: more perturbed calls than recorded offsets "
                    f"({len(self._replay)})"
                )
            offsets = self._replay[self._replay_position]
            self._replay_position += 1
            return offsets
        offsets = self._draw(mu, sigma)
        if self._record is not None:
            self._record.append(offsets)
        return offsets

    def _skips(self, module: nn.Module, output: Any) -> bool:
        """Whether this call goes unperturbed (evaluation mode, or the probability draw)."""
        if self.training_only and not module.training:
            return True
        if self.probability >= 1.0:
            return False
        device = self.generator.device if self.generator is not None else None
        draw = torch.rand((), generator=self.generator, device=device)
        if self._world() > 1:  # every process perturbs the call or none does: rank 0 decides
            draw = draw.to(output.device if isinstance(output, Tensor) else draw.device)
            dist.broadcast(draw, src=0)
        return bool(draw >= self.probability)

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Tensor | None:
        if self._skips(module, output):
            return None  # a forward hook returning None keeps the output
        if not isinstance(output, Tensor) or output.dim() not in (3, 4):
            shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
            raise TypeError(
                f"FeaturePerturbation on {type(module).__name__}: expected a (B, N, C) token "
                f"sequence or a (B, C, H, W) / (B, H, W, C) feature map, got {shape}"
            )
        if output.dim() == 3:
            prefix = output[:, : self.num_prefix_tokens]
            tokens = output[:, self.num_prefix_tokens :]
            perturbed = self._perturb(tokens, stat_dims=(1,), channel_dim=2)
            return torch.cat([prefix, perturbed], dim=1) if self.num_prefix_tokens else perturbed
        if self.channels_last:
            return self._perturb(output, stat_dims=(1, 2), channel_dim=3)
        return self._perturb(output, stat_dims=(2, 3), channel_dim=1)

    def _perturb(self, z: Tensor, stat_dims: tuple[int, ...], channel_dim: int) -> Tensor:
        mu = z.mean(dim=stat_dims, keepdim=True)
        sigma = (z.var(dim=stat_dims, keepdim=True, correction=0) + self.eps).sqrt()
        channels = z.shape[channel_dim]
        a, b = self._next_offsets(mu.reshape(-1, channels), sigma.reshape(-1, channels))
        a = a.reshape(
            mu.shape[0], *((channels if d == channel_dim else 1) for d in range(1, z.dim()))
        )
        b = b.reshape(a.shape)
        return (sigma + b) * (z - mu) / sigma + (mu + a)


DSU_TRAINING_PROBABILITY = 0.5
"""DSU's chance of perturbing a training forward pass (its module's ``p``)."""


class TokenEntry(Protocol):
    """A backbone that declares where its tokens enter the blocks
    (:class:`~fishertune.models.ViTBackbone` does)."""

    @property
    def token_entry(self) -> nn.Module:
        """The module whose output is the tokens entering the first block."""
        ...

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens ahead of the patch tokens (left unperturbed)."""
        ...

    @property
    def maps_inside(self) -> bool:
        """Whether the blocks carry ``(B, H, W, C)`` maps (SAM) instead of token sequences."""
        ...


def entry_perturbation(
    backbone: TokenEntry,
    scale: float,
    generator: torch.Generator | None = None,
    *,
    training: bool = False,
) -> FeaturePerturbation:
    """The DSU perturbation (method.md §4) of the tokens entering ``backbone``'s first block,
    class and register tokens untouched; SAM's entry is a ``(B, H, W, C)`` map.

    ``training``: DSU's training augmentation (perturb a forward pass with probability
    :data:`DSU_TRAINING_PROBABILITY`, only in training mode); otherwise every call is
    perturbed, the simulated domain of the estimation stage. Under ``torch.distributed`` the
    batch spans every process (``across_processes``), as the staged trainer's global batch does.
    """
    return FeaturePerturbation(
        backbone.token_entry,
        scale=scale,
        generator=generator,
        num_prefix_tokens=backbone.num_prefix_tokens,
        channels_last=backbone.maps_inside,
        probability=DSU_TRAINING_PROBABILITY if training else 1.0,
        training_only=training,
        across_processes=True,
    )
