"""Liquid-S4: diagonal state space layers with the liquid (input-correlation) kernel.

Papers: Hasani et al., "Liquid Structural State-Space Models", ICLR 2023,
https://arxiv.org/abs/2209.12951; the diagonal layer is S4D (Gu et al., "On the
Parameterization and Initialization of Diagonal State Space Models", NeurIPS 2022,
https://arxiv.org/abs/2206.11893) with S4D-Lin initialisation and ZOH discretisation.

The liquid SSM is x'(t) = [A + B u(t)] x(t) + B u(t), y = C x. Discretised and unrolled
(diagonal A, so all factors commute), its output is the S4 convolution K * u plus, for each
order p >= 2, terms in products of p inputs. Along the chain of p consecutive inputs those
terms form a convolution

    y = K * u + sum_{p=2..P} K^(p) * u^(p),   K^(p)_l = C Abar^l Bbar^p,
    u^(p)_k = u_k u_{k-1} ... u_{k-p+1}

- ``liquid_kind="kb"``: the full liquid kernel K^(p) above (one Vandermonde product per order).
- ``liquid_kind="polyb"``: the paper's simplification that keeps only the polynomial in B,
  K^(p) = C Bbar^p at lag 0 (a per-channel gain on u^(p)).
- ``liquid_kind="none"``: plain S4D.

Written from the paper's equations; the input-correlation signal uses products of consecutive
inputs (causal). Kernel and FFT convolution run in fp32 even under autocast. Weights: trained
from scratch; there are no public audio Liquid-S4 weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from audio_cls.nn.stem import STEM_CHANNELS, StemKind, frame_stem

__all__ = ["LiquidS4Encoder", "LiquidS4Layer", "S4DKernel", "fft_conv", "input_correlation"]


def fft_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Causal convolution y_t = sum_{l<=t} k_l u_{t-l} by FFT (zero-padded to 2L).

    Args:
        u: ``(... H L)``.
        k: ``(... H L)`` broadcastable to ``u``.

    Returns:
        ``(... H L)``.
    """
    L = u.shape[-1]
    u_f = torch.fft.rfft(u, n=2 * L)
    k_f = torch.fft.rfft(k, n=2 * L)
    return torch.fft.irfft(u_f * k_f, n=2 * L)[..., :L]


def input_correlation(u: torch.Tensor, p: int) -> torch.Tensor:
    """u^(p)_k = u_k u_{k-1} ... u_{k-p+1}, zero before the sequence start.

    Args:
        u: ``(... L)``.
        p: Order (number of factors), >= 1.
    """
    out = u
    for i in range(1, p):
        out = out * F.pad(u[..., :-i], (i, 0))
    return out


class S4DKernel(nn.Module):
    """Diagonal SSM kernels K^(p)_l = 2 Re sum_n C_n Bbar_n^p Abar_n^l (conjugate pairs).

    Parameters in the paper's notation, N/2 complex modes per channel: ``log_dt`` (H),
    ``log_A_real`` and ``A_imag`` (H N/2) with A = -exp(log_A_real) + i A_imag (S4D-Lin:
    -1/2 + i pi n), ``B`` and ``C`` (H N/2 2) as real views of complex tensors.
    ``log_dt``, A and ``B`` carry ``_optim = {"weight_decay": 0.0, "lr": ssm_lr}``.

    Args:
        H: Channels.
        N: State size (N/2 complex conjugate pairs).
        dt_min: Smallest initial step.
        dt_max: Largest initial step.
        ssm_lr: Learning rate hint for dt, A, B; ``None`` = the optimiser's.
    """

    def __init__(
        self,
        H: int,
        N: int = 64,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float | None = 1e-3,
    ) -> None:
        super().__init__()
        if N < 2 or N % 2:
            raise ValueError(f"state size N must be even and >= 2, got {N}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min}, {dt_max}")
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        C = torch.randn(H, N // 2, dtype=torch.cfloat)
        B = torch.ones(H, N // 2, dtype=torch.cfloat)
        log_A_real = torch.log(0.5 * torch.ones(H, N // 2))
        A_imag = math.pi * torch.arange(N // 2).float().repeat(H, 1)
        self.C = nn.Parameter(torch.view_as_real(C))
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(log_A_real)
        self.A_imag = nn.Parameter(A_imag)
        self.B = nn.Parameter(torch.view_as_real(B))
        self.ssm_optim = {"weight_decay": 0.0}
        if ssm_lr is not None:
            self.ssm_optim["lr"] = ssm_lr
        self._mark_optim()

    def _mark_optim(self) -> None:
        for p in (self.log_dt, self.log_A_real, self.A_imag, self.B):
            p._optim = dict(self.ssm_optim)

    def __setstate__(self, state: dict) -> None:
        # copy.deepcopy rebuilds Parameters without their attributes: put the hints back.
        super().__setstate__(state)
        self._mark_optim()

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZOH: Abar = exp(dt A), Bbar = (Abar - 1) / A * B; all complex ``(H N/2)``, fp32.

        Returns:
            ``(dtA, Abar, Bbar, C)``.
        """
        dt = torch.exp(self.log_dt.float())  # (H)
        A = -torch.exp(self.log_A_real.float()) + 1j * self.A_imag.float()  # (H N)
        dtA = A * dt[:, None]  # (H N)
        A_bar = torch.exp(dtA)
        B_bar = (A_bar - 1.0) / A * torch.view_as_complex(self.B.float())
        return dtA, A_bar, B_bar, torch.view_as_complex(self.C.float())

    def forward(self, L: int, powers: tuple[int, ...] = (1,)) -> torch.Tensor:
        """Kernels for each power p of Bbar.

        Args:
            L: Kernel length.
            powers: The p of each K^(p); p = 1 is the S4D kernel.

        Returns:
            ``(P H L)`` fp32, P = ``len(powers)``.
        """
        device_type = self.log_dt.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            dtA, _, B_bar, C = self.discretize()
            V = torch.exp(dtA.unsqueeze(-1) * torch.arange(L, device=dtA.device))  # (H N L)
            W = torch.stack([C * B_bar**p for p in powers])  # (P H N)
            return 2 * torch.einsum("phn,hnl->phl", W, V).real


class LiquidS4Layer(nn.Module):
    """S4D layer with an optional liquid kernel: SSM, D skip, GELU, dropout, 1x1 conv + GLU.

    Args:
        H: Channels (model width).
        N: State size.
        liquid_kind: ``none``, ``kb`` (full liquid kernel) or ``polyb`` (polynomial in B).
        liquid_order: Highest order P of input correlations (>= 2 when liquid).
        dropout: Dropout after the activation.
        bidirectional: A second kernel reads the reversed sequence; outputs summed.
        ssm_lr: Learning-rate hint for dt, A, B.
        dt_min: Smallest initial step.
        dt_max: Largest initial step.
    """

    def __init__(
        self,
        H: int,
        N: int = 64,
        liquid_kind: Literal["none", "kb", "polyb"] = "polyb",
        liquid_order: int = 2,
        dropout: float = 0.0,
        bidirectional: bool = False,
        ssm_lr: float | None = 1e-3,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ) -> None:
        super().__init__()
        if liquid_kind not in ("none", "kb", "polyb"):
            raise ValueError(f"liquid_kind must be 'none', 'kb' or 'polyb', got {liquid_kind!r}")
        if liquid_kind != "none" and liquid_order < 2:
            raise ValueError(f"liquid_order must be >= 2 for a liquid kernel, got {liquid_order}")
        self.H, self.N = H, N
        self.liquid_kind = liquid_kind
        self.liquid_order = liquid_order
        self.kernel = S4DKernel(H, N, dt_min, dt_max, ssm_lr)
        self.kernel_rev = S4DKernel(H, N, dt_min, dt_max, ssm_lr) if bidirectional else None
        self.D = nn.Parameter(torch.randn(H))
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.output_linear = nn.Sequential(nn.Conv1d(H, 2 * H, kernel_size=1), nn.GLU(dim=-2))

    def _liquid_powers(self) -> tuple[int, ...]:
        return () if self.liquid_kind == "none" else tuple(range(2, self.liquid_order + 1))

    def ssm(self, kernel: S4DKernel, u: torch.Tensor) -> torch.Tensor:
        """Linear + liquid part for one direction, without D: ``(B H L) -> (B H L)`` fp32."""
        L = u.shape[-1]
        powers = self._liquid_powers()
        if self.liquid_kind == "kb":
            k = kernel(L, (1, *powers))  # (P H L)
            signals = torch.stack([input_correlation(u, p) for p in (1, *powers)], dim=1)
            return fft_conv(signals, k).sum(dim=1)  # (B P H L) -> (B H L)
        y = fft_conv(u, kernel(L)[0])  # (B H L)
        if self.liquid_kind == "polyb":
            gains = kernel(1, powers)[..., 0]  # (P H): C Bbar^p at lag 0
            for gain, p in zip(gains, powers):
                y = y + gain[:, None] * input_correlation(u, p)
        return y

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``(B H L) -> (B H L)``."""
        with torch.autocast(device_type=u.device.type, enabled=False):
            v = u.float()
            y = self.ssm(self.kernel, v)  # (B H L)
            if self.kernel_rev is not None:
                y = y + self.ssm(self.kernel_rev, v.flip(-1)).flip(-1)
            y = y + v * self.D.float()[:, None]
        y = self.dropout(self.activation(y))
        if not torch.is_autocast_enabled(u.device.type):
            y = y.to(u.dtype)
        return self.output_linear(y)


class LiquidS4Encoder(nn.Module):
    """Feature frames -> residual pre-norm Liquid-S4 layers -> normalised frames (unpooled).

    Input ``(B F T)`` (F feature channels, e.g. mel bins; T frames); output ``(B T H)``.

    Args:
        in_channels: Feature channels F of the input.
        d_model: Width H of every layer and of the embedding.
        n_layers: Number of Liquid-S4 layers.
        d_state: State size N per channel.
        liquid_kind: ``polyb``, ``kb`` or ``none`` (plain S4D).
        liquid_order: Highest order P of input correlations.
        dropout: Dropout inside each layer and on its residual branch.
        bidirectional: Each layer also reads the time-reversed sequence.
        ssm_lr: Learning-rate hint on dt, A, B (no weight decay either way).
        stem: ``linear`` per-frame projection or ``conv`` stem (:mod:`audio_cls.nn.stem`).
        stem_channels: Channels of the conv stem's stages.
    """

    def __init__(
        self,
        in_channels: int,
        d_model: int = 128,
        n_layers: int = 4,
        d_state: int = 64,
        liquid_kind: Literal["none", "kb", "polyb"] = "polyb",
        liquid_order: int = 2,
        dropout: float = 0.1,
        bidirectional: bool = False,
        ssm_lr: float | None = 1e-3,
        stem: StemKind = "linear",
        stem_channels: Sequence[int] = STEM_CHANNELS,
    ) -> None:
        super().__init__()
        if in_channels < 1 or d_model < 1 or n_layers < 1:
            raise ValueError("in_channels, d_model and n_layers must be >= 1")
        self.num_features = d_model
        self.layout = "sequence"
        self.input_proj = frame_stem(stem, in_channels, d_model, stem_channels)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.layers = nn.ModuleList(
            LiquidS4Layer(
                d_model, d_state, liquid_kind, liquid_order, dropout, bidirectional, ssm_lr
            )
            for _ in range(n_layers)
        )
        self.dropout = nn.Dropout(dropout)
        self.norm_f = nn.LayerNorm(d_model)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named taps ``(B T H)``: ``stem``, ``layer{i}`` (residual stream) and ``norm``."""
        h = self.input_proj(x).float()  # (B L H), fp32 residual stream
        taps = {"stem": h}
        for i, (norm, layer) in enumerate(zip(self.norms, self.layers)):
            z = layer(norm(h).transpose(1, 2)).transpose(1, 2)  # (B H L) -> (B L H)
            h = taps[f"layer{i}"] = h + self.dropout(z)
        taps["norm"] = self.norm_f(h)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B F T) -> (B T H)`` normalised frame features."""
        return self.forward_intermediates(x)["norm"]
