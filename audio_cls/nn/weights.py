"""Reading published weights: from a Hugging Face hub name or a local copy.

Every family that starts from public weights reads them here, so offline use is the same for
all: a hub name downloads (and is cached by ``huggingface_hub``); a local folder or file is
read as is, which is how machines without internet use them.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["PretrainedWeightsError", "fetch_state_dict"]


class PretrainedWeightsError(ValueError):
    """Published weights could not be fetched, or do not fit the model as configured."""


def fetch_state_dict(source: str) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` checkpoint.

    Args:
        source: A Hugging Face hub repo (``facebook/vjepa2-vitl-fpc64-256``), a folder holding
            ``*.safetensors`` files (shards are merged), or one ``.safetensors`` file.

    Raises:
        PretrainedWeightsError: Nothing could be fetched or read; the message names ``source``
            and what to do.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(source).expanduser()
    if not path.exists():
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(source, allow_patterns=["*.safetensors", "*.json"]))
        except Exception as err:  # offline, unknown repo, HTTP and name errors alike
            raise PretrainedWeightsError(
                f"could not fetch weights {source!r} from the Hugging Face hub "
                f"({type(err).__name__}: {err}); without internet, download the repo "
                "elsewhere and pass its local folder instead"
            ) from err
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files or files[0].suffix != ".safetensors":
        raise PretrainedWeightsError(
            f"{source}: no .safetensors file there; pass a hub name or a folder of .safetensors"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(file))
        except (SafetensorError, OSError) as err:
            raise PretrainedWeightsError(f"{file}: unreadable safetensors file ({err})") from err
    return state
