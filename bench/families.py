"""Per model family: training step time, inference segments/s and peak memory, as configured.

    python bench/families.py [--families mel_cnn esresnext_fbsp ...] [--threads 2]
    python bench/families.py --device cuda        # bf16 autocast; Mamba kernels vs reference

Each family is built from its ``lightning_configs/*_esc10.yaml`` (the model's ``init_args``,
the data's rate and window), so a step is what ``audio-cls fit`` runs per batch of that config:
front end, forward, cross-entropy, backward, AdamW, in train mode. Inference is the model's
forward in eval mode without gradients over batches of --infer-batch windows (what
``classify`` runs once the audio is decoded). Each family runs in its own process, so the peak
resident memory (CPU) or peak allocated memory (CUDA) is its own. Prints medians of --steps
timed steps after --warmup untimed ones. Random weights and inputs: the time does not depend
on them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from audio_cls.models import list_models

CONFIGS = Path(__file__).resolve().parents[1] / "lightning_configs"


def esc10_config(family: str) -> dict:
    """The ``*_esc10.yaml`` config whose model is ``family``."""
    for path in sorted(CONFIGS.glob("*_esc10.yaml")):
        config = yaml.safe_load(path.read_text())
        module_name, _, class_name = config["model"]["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        if cls.registry_name == family:
            return {**config, "_cls": cls, "_name": path.name}
    raise SystemExit(f"no lightning_configs/*_esc10.yaml trains {family}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(step, device: str, warmup: int, steps: int) -> float:
    times = []
    for i in range(warmup + steps):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(family: str, args: argparse.Namespace, overrides: dict) -> dict:
    config = esc10_config(family)
    data = config.get("data", {})
    rate = data.get("sample_rate", 16000)
    seconds = data.get("window_sec") or data.get("clip_sec", 5.0)
    kwargs = {**config["model"].get("init_args", {}), **overrides}
    model = config["_cls"](num_classes=10, sample_rate=rate, **kwargs).to(args.device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if args.device.startswith("cuda")
        else nullcontext()
    )
    generator = torch.Generator().manual_seed(0)
    samples = round(seconds * rate)
    wave = (0.1 * torch.randn(args.batch_size, samples, generator=generator)).to(args.device)
    target = torch.randint(0, 10, (args.batch_size,), generator=generator).to(args.device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        with autocast:
            loss = F.cross_entropy(model(wave).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train = median_seconds(train_step, args.device, args.warmup, args.steps)
    windows = (0.1 * torch.randn(args.infer_batch, samples, generator=generator)).to(args.device)

    def infer() -> None:
        with torch.no_grad(), autocast:
            model(windows)

    model.eval()
    infer_s = median_seconds(infer, args.device, args.warmup, args.steps)
    if args.device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "config": config["_name"],
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "window": f"{seconds:g} s @ {rate / 1000:g} kHz",
        "train_ms": train * 1e3,
        "clips_per_s": args.batch_size / train,
        "segments_per_s": args.infer_batch / infer_s,
        "peak_mb": peak_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    families = list_models()  # every registered family; a new one is timed without edits here
    parser.add_argument("--families", nargs="+", default=families, choices=families)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="training batch")
    parser.add_argument("--infer-batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure in this process
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    if args.one:
        print(json.dumps(measure(args.one, args, json.loads(args.overrides))))
        return

    where = args.device if args.device != "cpu" else f"cpu, {args.threads} threads"
    print(f"training batch {args.batch_size}, inference batch {args.infer_batch} ({where})")
    header = ["family", "params", "window", "train ms/step", "clips/s", "infer seg/s", "peak MB"]
    print(f"{header[0]:<22}{header[1]:>8}{header[2]:>18}{header[3]:>15}{header[4]:>9}"
          f"{header[5]:>13}{header[6]:>9}")  # fmt: skip
    for family in args.families:
        variants = [(family, {})]
        if family == "mamba" and args.device.startswith("cuda"):
            variants = [("mamba (kernels)", {"use_kernels": True}),
                        ("mamba (reference)", {"use_kernels": False})]  # fmt: skip
        for label, overrides in variants:
            cmd = [sys.executable, __file__, *_without_families(sys.argv[1:]), "--one", family,
                   "--overrides", json.dumps(overrides)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{label:<22} failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{label:<22}{r['params_m']:>7.2f}M{r['window']:>18}{r['train_ms']:>15.0f}"
                  f"{r['clips_per_s']:>9.1f}{r['segments_per_s']:>13.1f}{r['peak_mb']:>9.0f}")  # fmt: skip


def _without_families(argv: list[str]) -> list[str]:
    """The command line without ``--families a b c`` (each child measures one)."""
    out, skipping = [], False
    for a in argv:
        if a == "--families":
            skipping = True
            continue
        if skipping and not a.startswith("--"):
            continue
        skipping = False
        out.append(a)
    return out


if __name__ == "__main__":
    main()
