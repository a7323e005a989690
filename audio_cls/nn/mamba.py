"""Mamba encoder over log-mel frames.

Paper: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (2023),
https://arxiv.org/abs/2312.00752. Bidirectional variant as in Vision Mamba (Zhu et al., 2024,
https://arxiv.org/abs/2401.09417): a second mixer reads the time-reversed sequence.

The blocks are ``transformers``' ``MambaMixer`` (``transformers.models.mamba.modeling_mamba``),
so parameter names match Hugging Face Mamba checkpoints (``layers.{i}.mixer.*``,
``layers.{i}.norm.weight``, ``norm_f.weight``) and one state dict serves both compute paths:

- kernel path: ``MambaMixer.forward``. ``transformers`` binds its module-level functions
  (``mamba_inner_fn``, ``mamba_selective_scan``, ``causal_conv1d_fn``) to the ``mamba-ssm`` /
  ``causal-conv1d`` CUDA kernels when those packages import, else to its own PyTorch code;
  the choice is made once, when ``modeling_mamba`` is imported, not per device.
- reference path: :func:`mamba_mixer_ref`, the same math in plain PyTorch (sequential
  selective scan with a hand-written backward), runs anywhere.

``MambaEncoder(use_kernels=None)`` picks the kernel path only for CUDA input when the kernels
are bound (:func:`kernels_available`), so a checkpoint trained on a GPU runs unchanged on a CPU.
Importing this module imports neither ``modeling_mamba`` nor ``mamba_ssm``; building an encoder
imports the former, which imports ``mamba_ssm`` only where it is installed. The residual stream
stays fp32 under autocast (as ``residual_in_fp32`` in ``transformers``' ``MambaBlock``).

Weights: trained from scratch here; no public audio Mamba weights are loaded. Install the
kernels with the ``cuda`` extra (``mamba-ssm``, ``causal-conv1d``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import MambaConfig

from audio_cls.nn.stem import STEM_CHANNELS, StemKind, frame_stem

if TYPE_CHECKING:
    from transformers.models.mamba.modeling_mamba import MambaMixer

__all__ = [
    "MambaEncoder",
    "MambaLayer",
    "kernels_available",
    "mamba_mixer_ref",
    "selective_scan_ref",
]

_SSM_OPTIM = {"weight_decay": 0.0}


def _modeling_mamba() -> ModuleType:
    """``transformers.models.mamba.modeling_mamba``, imported on first use."""
    return importlib.import_module("transformers.models.mamba.modeling_mamba")


@functools.lru_cache(maxsize=1)
def kernels_available() -> bool:
    """Whether ``transformers`` bound ``MambaMixer`` to the ``mamba-ssm`` CUDA kernels.

    Reads the binding ``transformers.integrations.hub_kernels.
    use_kernel_func_from_hub_with_fallback`` made for ``mamba_selective_scan`` (its
    ``is_new_implementation`` flag); falls back to ``is_mamba_ssm_available()`` where that
    wrapper looks different.
    """
    mm = _modeling_mamba()
    try:
        bound = inspect.getclosurevars(mm.mamba_selective_scan).nonlocals["is_new_implementation"]
        return bool(bound)
    except (KeyError, TypeError, ValueError):
        from transformers.utils.import_utils import is_mamba_ssm_available

        return bool(is_mamba_ssm_available())


class _SelectiveScan(torch.autograd.Function):
    """Sequential selective scan with a hand-written backward (a reverse scan).

    Autograd through a Python loop records several nodes per time step and re-stacks their
    gradients; materialising ``exp(delta A)`` and ``delta B u`` for all steps (B E L N) makes
    every op a pass over memory. Here each step works on one (B E N) block that stays in cache,
    forward and backward alike; only the states are kept for the backward (L B E N), and
    ``exp(delta_t A)`` is recomputed there. The scan runs 5x faster than under autograd on 2 CPU
    cores (B 16, E 512, L 155). The D skip is left to the caller (plain autograd).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C):  # (B E L) (B E L) (E N) (B L N) (B L N)
        with torch.autocast(u.device.type, enabled=False):
            L = u.shape[-1]
            # Time-major copies, so step t reads contiguous blocks.
            delta_t = delta.permute(2, 0, 1).contiguous()  # (L B E)
            du_t = (delta * u).permute(2, 0, 1).contiguous()  # (L B E)
            B_t = B.transpose(0, 1).contiguous().unsqueeze(2)  # (L B 1 N)
            C_t = C.transpose(0, 1).contiguous().unsqueeze(-1)  # (L B N 1)
            states = u.new_empty(L, *u.shape[:2], A.shape[-1])  # (L B E N)
            y = u.new_empty(L, *u.shape[:2], 1)  # (L B E 1)
            h = u.new_zeros(states.shape[1:])
            for t in range(L):
                dA = torch.exp(delta_t[t].unsqueeze(-1) * A)
                h = torch.mul(h, dA, out=states[t]).addcmul_(du_t[t].unsqueeze(-1), B_t[t])
                torch.bmm(h, C_t[t], out=y[t])
        ctx.save_for_backward(u, delta, A, delta_t, du_t, B_t, C_t, states)
        return y.squeeze(-1).permute(1, 2, 0)  # (B E L)

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, delta_t, du_t, B_t, C_t, states = ctx.saved_tensors
        with torch.autocast(u.device.type, enabled=False):
            L = states.shape[0]
            grad_y = grad_y.to(u.dtype).permute(2, 0, 1).contiguous().unsqueeze(-1)  # (L B E 1)
            grad_delta_A = u.new_zeros(delta_t.shape)  # d/d(delta_t) through exp(delta_t A)
            grad_du = u.new_empty(*delta_t.shape, 1)  # (L B E 1)
            grad_B = u.new_empty(B_t.shape)  # (L B 1 N)
            grad_C = u.new_empty(C_t.shape)  # (L B N 1)
            grad_A = torch.zeros_like(A)
            g = u.new_zeros(states.shape[1:])  # total gradient of h_t (B E N)
            for t in range(L - 1, -1, -1):
                h = states[t]
                torch.bmm(h.transpose(1, 2), grad_y[t], out=grad_C[t])
                g.addcmul_(grad_y[t], C_t[t].transpose(1, 2))  # + y_t's own term
                torch.bmm(g, B_t[t].transpose(1, 2), out=grad_du[t])  # h_t = ... + du_t B_t
                torch.bmm(du_t[t].unsqueeze(1), g, out=grad_B[t])
                if t > 0:  # h_t = exp(delta_t A) h_{t-1} + ...;  h_{-1} = 0
                    dA = torch.exp(delta_t[t].unsqueeze(-1) * A)
                    q = g * dA * states[t - 1]  # d/d(delta_t A)
                    grad_delta_A[t] = (q * A).sum(-1)
                    grad_A += (q * delta_t[t].unsqueeze(-1)).sum(0)
                    g *= dA
            grad_du = grad_du.squeeze(-1).permute(1, 2, 0)  # (B E L)
            grad_delta = grad_delta_A.permute(1, 2, 0) + grad_du * u
            grad_u = grad_du * delta
            grad_B = grad_B.squeeze(2).transpose(0, 1)  # (B L N)
            grad_C = grad_C.squeeze(-1).transpose(0, 1)
        return grad_u, grad_delta, grad_A, grad_B, grad_C


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """Selective scan, step by step, in fp32 (same math as ``mamba_ssm``'s kernel).

    h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t,  y_t = C_t h_t + D u_t.

    Args:
        u: Input ``(B E L)``.
        delta: Positive step sizes ``(B E L)`` (softplus already applied).
        A: State matrix diagonal ``(E N)``, negative real.
        B: Input-dependent input matrix ``(B L N)``.
        C: Input-dependent output matrix ``(B L N)``.
        D: Skip ``(E)``.

    Returns:
        ``(B E L)`` in the dtype of ``u``.
    """
    dtype = u.dtype
    u = u.float()
    y = _SelectiveScan.apply(u, delta.float(), A.float(), B.float(), C.float())
    return (y + u * D.float()[:, None]).to(dtype)


def mamba_mixer_ref(mixer: MambaMixer, x: torch.Tensor) -> torch.Tensor:
    """A ``MambaMixer`` forward in plain PyTorch, on the mixer's own parameters.

    Args:
        mixer: A ``transformers`` ``MambaMixer``.
        x: ``(B L D)``.

    Returns:
        ``(B L D)``.
    """
    L = x.shape[1]
    R, N = mixer.time_step_rank, mixer.ssm_state_size
    u, z = mixer.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (B E L) (B E L)
    u = mixer.act(mixer.conv1d(u)[..., :L])  # causal depthwise conv (B E L)
    dt, B, C = torch.split(mixer.x_proj(u.transpose(1, 2)), [R, N, N], dim=-1)  # (B L R/N/N)
    delta = F.softplus(mixer.dt_proj(dt).float()).transpose(1, 2)  # (B E L)
    A = -torch.exp(mixer.A_log.float())  # (E N)
    y = selective_scan_ref(u, delta, A, B, C, mixer.D)  # (B E L)
    y = y * mixer.act(z)
    return mixer.out_proj(y.transpose(1, 2).to(x.dtype))  # (B L D)


def _mixer_kernel(mixer: MambaMixer, x: torch.Tensor) -> torch.Tensor:
    """``MambaMixer.forward``: the mamba-ssm kernels where transformers bound them."""
    return mixer(x)


class MambaLayer(nn.Module):
    """Residual pre-norm Mamba block; optionally a second mixer on the reversed sequence.

    ``A_log``, ``D`` and ``dt_proj`` of each mixer carry ``_optim = {"weight_decay": 0.0}``.

    Args:
        config: ``transformers`` ``MambaConfig``.
        layer_idx: Index of the layer in the stack.
        bidirectional: Add a mixer reading the time-reversed sequence (outputs summed).
        dropout: Dropout on the mixer output before the residual sum.
    """

    def __init__(
        self, config: MambaConfig, layer_idx: int, bidirectional: bool, dropout: float
    ) -> None:
        super().__init__()
        mm = _modeling_mamba()
        self.norm = mm.MambaRMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.mixer = mm.MambaMixer(config, layer_idx=layer_idx)
        self.mixer_rev = mm.MambaMixer(config, layer_idx=layer_idx) if bidirectional else None
        self.dropout = nn.Dropout(dropout)
        self._mark_optim()

    def _mark_optim(self) -> None:
        for mixer in (self.mixer, self.mixer_rev):
            if mixer is not None:
                for p in (mixer.A_log, mixer.D, mixer.dt_proj.weight, mixer.dt_proj.bias):
                    p._optim = dict(_SSM_OPTIM)

    def __setstate__(self, state: dict) -> None:
        # copy.deepcopy rebuilds Parameters without their attributes: put the hints back.
        super().__setstate__(state)
        self._mark_optim()

    def forward(self, x: torch.Tensor, use_kernels: bool) -> torch.Tensor:
        """``(B L D) -> (B L D)``; ``use_kernels`` selects ``MambaMixer.forward``."""
        mix = _mixer_kernel if use_kernels else mamba_mixer_ref
        h = self.norm(x)
        y = mix(self.mixer, h)
        if self.mixer_rev is not None:
            y = y + mix(self.mixer_rev, h.flip(1)).flip(1)
        return x + self.dropout(y)


class MambaEncoder(nn.Module):
    """Feature frames -> stack of Mamba blocks -> normalised frame features (unpooled).

    Input ``(B F T)`` (F feature channels, e.g. mel bins; T frames); output ``(B T D)``.

    Args:
        in_channels: Feature channels F of the input.
        d_model: Width D of the residual stream and of the embedding.
        n_layers: Number of Mamba blocks.
        d_state: SSM state size N.
        d_conv: Width of the causal depthwise convolution.
        expand: Inner width E = expand * D.
        bidirectional: Each block also runs a mixer on the time-reversed sequence.
        dropout: Dropout after the input projection and on each block's output.
        stem: ``linear`` per-frame projection or ``conv`` stem (:mod:`audio_cls.nn.stem`).
        stem_channels: Channels of the conv stem's stages.
        use_kernels: ``None`` = the ``mamba-ssm`` kernels for CUDA input when transformers
            bound them, the PyTorch reference otherwise; ``True`` = always the kernels (error
            if unusable); ``False`` = always the reference. May be changed after construction.
    """

    def __init__(
        self,
        in_channels: int,
        d_model: int = 256,
        n_layers: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        bidirectional: bool = False,
        dropout: float = 0.0,
        use_kernels: bool | None = None,
        stem: StemKind = "linear",
        stem_channels: Sequence[int] = STEM_CHANNELS,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("d_model", d_model),
            ("n_layers", n_layers),
            ("d_state", d_state),
            ("d_conv", d_conv),
            ("expand", expand),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        config = MambaConfig(
            hidden_size=d_model,
            state_size=d_state,
            conv_kernel=d_conv,
            expand=expand,
            num_hidden_layers=n_layers,
            use_cache=False,
        )
        self.num_features = d_model
        self.layout = "sequence"
        self.use_kernels = use_kernels
        self.input_proj = frame_stem(stem, in_channels, d_model, stem_channels)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            MambaLayer(config, i, bidirectional, dropout) for i in range(n_layers)
        )
        self.norm_f = _modeling_mamba().MambaRMSNorm(d_model, eps=config.layer_norm_epsilon)

    def _resolve_use_kernels(self, x: torch.Tensor) -> bool:
        if self.use_kernels is None:
            return x.is_cuda and kernels_available()
        if self.use_kernels:
            if not x.is_cuda:
                raise RuntimeError("use_kernels=True needs CUDA input; the kernels are CUDA-only")
            if not kernels_available():
                raise RuntimeError(
                    "use_kernels=True but transformers did not bind the mamba-ssm kernels: "
                    "install the 'cuda' extra (mamba-ssm, causal-conv1d)"
                )
        return bool(self.use_kernels)

    def forward_intermediates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named taps ``(B T D)``: ``stem``, ``layer{i}`` (residual stream) and ``norm``."""
        use_kernels = self._resolve_use_kernels(x)
        h = self.dropout(self.input_proj(x).float())  # (B T D) fp32 residual
        taps = {"stem": h}
        for i, layer in enumerate(self.layers):
            h = taps[f"layer{i}"] = layer(h, use_kernels)
        taps["norm"] = self.norm_f(h)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B F T) -> (B T D)`` normalised frame features."""
        return self.forward_intermediates(x)["norm"]
