"""Training step time per model family: batch 16 x 5 s at 16 kHz, as the ``*_esc10`` configs train.

    python bench/train_step.py [--families mel_cnn mamba ...] [--threads 2]
    python bench/train_step.py --device cuda            # bf16 autocast; Mamba kernels vs reference

Each family is built from ``lightning_configs/<family>_esc10.yaml`` (model ``init_args``), in
train mode with SpecAugment, so a step is what ``audio-cls fit`` runs per batch: front end,
forward, cross-entropy, backward, AdamW. Prints the median of --steps timed steps after
--warmup untimed ones. On CUDA the Mamba family is timed twice, with the mamba-ssm kernels and
with the PyTorch reference path, and their ratio is printed. Random weights and inputs: the
time does not depend on them.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from audio_cls.models import list_models

CONFIGS = Path(__file__).resolve().parents[1] / "lightning_configs"
CONFIG_OF = {"mel_cnn": "cnn_esc10.yaml"}


def build(family: str, **overrides):
    """The family's model with its ``*_esc10`` config settings and 10 classes."""
    config = yaml.safe_load((CONFIGS / CONFIG_OF.get(family, f"{family}_esc10.yaml")).read_text())
    module_name, _, class_name = config["model"]["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    kwargs = {**config["model"].get("init_args", {}), **overrides}
    return cls(num_classes=10, class_names=[str(i) for i in range(10)], sample_rate=16000, **kwargs)


def time_steps(model, device: str, batch: int, seconds: float, warmup: int, steps: int) -> float:
    """Median seconds per training step."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    waveform = (0.1 * torch.randn(batch, int(seconds * 16000), generator=generator)).to(device)
    target = torch.randint(0, 10, (batch,), generator=generator).to(device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()
    )
    times = []
    for i in range(warmup + steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        with autocast:
            logits = model(waveform)
        loss = F.cross_entropy(logits.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    families = list_models()  # every registered family; a new one is timed without edits here
    parser.add_argument("--families", nargs="+", default=families, choices=families)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)

    where = args.device if args.device != "cpu" else f"cpu, {args.threads} threads"
    print(f"training step, batch {args.batch_size} x {args.seconds:g} s ({where})")
    print(f"{'family':<22}{'params':>10}{'ms/step':>10}{'clips/s':>10}")
    runs = []
    for family in args.families:
        variants = [(family, {})]
        if family == "mamba" and args.device.startswith("cuda"):
            variants = [("mamba (kernels)", {"use_kernels": True}),
                        ("mamba (reference)", {"use_kernels": False})]  # fmt: skip
        for label, overrides in variants:
            model = build(family, **overrides)
            params = sum(p.numel() for p in model.parameters())
            seconds = time_steps(
                model, args.device, args.batch_size, args.seconds, args.warmup, args.steps
            )
            runs.append((label, seconds))
            print(
                f"{label:<22}{params / 1e6:>9.2f}M{seconds * 1e3:>10.0f}"
                f"{args.batch_size / seconds:>10.1f}"
            )
    named = dict(runs)
    if "mamba (kernels)" in named:
        ratio = named["mamba (reference)"] / named["mamba (kernels)"]
        print(f"mamba kernels speed-up over the reference path: {ratio:.1f}x")


if __name__ == "__main__":
    main()
