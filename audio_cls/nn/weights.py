"""Reading published weights in their public formats, with or without internet.

Every model family that starts from public weights reads them here, in two steps:

* :func:`resolve_weights` turns a source into a local path: a local file or folder is used as
  is (which is how machines without internet use published weights), an ``https://`` URL is
  downloaded once into a cache, and a Hugging Face hub name (``owner/name``) is fetched with
  ``huggingface_hub``.
* :func:`read_weights` reads that path into a flat ``{name: tensor}`` dict, whatever the format:
  ``.safetensors`` (one file or a folder of shards), PyTorch pickles (``.pt``, ``.pth``,
  ``.bin``, ``.ckpt``; tensors only), NumPy ``.npy`` (a plain array, or a pickled dict of arrays
  as some projects publish; only numpy objects are unpickled) and Keras/HDF5 ``.h5``.

Nothing here executes code from a weights file. :func:`load_into` then maps checkpoint names
onto a module's own and loads what fits, with one readable report of what does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import re
import tempfile
import urllib.parse
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, get_args

import numpy as np
import torch

from audio_cls.extras import require

__all__ = [
    "LoadReport",
    "PretrainedWeightsError",
    "WeightFormat",
    "fetch_state_dict",
    "load_into",
    "read_weights",
    "rename_key",
    "resolve_weights",
    "weight_format",
]

WeightFormat = Literal["safetensors", "torch", "npy", "h5"]

_SUFFIXES: dict[str, WeightFormat] = {
    ".safetensors": "safetensors",
    ".pt": "torch",
    ".pth": "torch",
    ".bin": "torch",
    ".ckpt": "torch",
    ".npy": "npy",
    ".h5": "h5",
    ".hdf5": "h5",
}
_FILE_SUFFIXES = ", ".join(_SUFFIXES)

# owner/name as the Hugging Face hub spells repo ids (letters, digits, "-", "_", ".").
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")
_HUB_PREFIX = "hf-hub:"

_LIST_AT_MOST = 10


class PretrainedWeightsError(ValueError):
    """Published weights could not be fetched or read, or do not fit the model as configured."""


# ---------------------------------------------------------------------------------------------
# Where the weights are


def weight_format(path: Path) -> WeightFormat:
    """The format of a weights file or folder, told by its suffix.

    Args:
        path: A file (``.safetensors``; ``.pt``, ``.pth``, ``.bin`` or ``.ckpt`` for PyTorch;
            ``.npy``; ``.h5`` or ``.hdf5``) or a folder holding ``*.safetensors`` files.

    Returns:
        ``"safetensors"``, ``"torch"``, ``"npy"`` or ``"h5"``.

    Raises:
        PretrainedWeightsError: The suffix is none of these, or the folder holds no
            ``.safetensors`` file.
    """
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.safetensors")):
            return "safetensors"
        raise PretrainedWeightsError(
            f"{path}: no .safetensors file in this folder; pass a folder of .safetensors files "
            f"or one weights file ({_FILE_SUFFIXES})"
        )
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise PretrainedWeightsError(
            f"{path}: unknown weights format {path.suffix or '(no suffix)'!r}; "
            f"supported: {_FILE_SUFFIXES} or a folder of .safetensors files (rename the file "
            "if its suffix is wrong)"
        )
    return fmt


def _default_cache_dir() -> Path:
    env = os.environ.get("AUDIO_CLS_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "audio-cls"
    return root / "weights"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    detail = text.splitlines()[0].strip() if text else ""
    return f"{type(err).__name__}: {detail}" if detail else type(err).__name__


def _hub_repo(source: str) -> str | None:
    """``owner/name`` when ``source`` names a hub repo, else None."""
    explicit = source.startswith(_HUB_PREFIX)
    repo = source.removeprefix(_HUB_PREFIX)
    if not _HUB_ID.fullmatch(repo) or ".." in repo or "--" in repo:
        return None
    if not explicit and PurePosixPath(repo).suffix.lower() in _SUFFIXES:
        return None  # "weights/model.pth" is a missing file, not a repo
    return repo


def _download(url: str, cache_dir: str | Path | None) -> Path:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name or name in {".", ".."}:
        raise PretrainedWeightsError(
            f"{url}: the URL names no file; download it elsewhere and pass the local path instead"
        )
    root = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    # one folder per URL: two releases both named pytorch_model.bin must not share a file
    folder = root / hashlib.sha256(url.encode()).hexdigest()[:16]
    target = folder / name
    if target.is_file():
        return target
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
        os.close(fd)
    except OSError as err:
        raise PretrainedWeightsError(
            f"{url}: cannot write to the weights cache {folder} ({_first_line(err)}); "
            "pass another cache_dir, or download the file elsewhere and pass its local path"
        ) from err
    tmp = Path(tmp_name)
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
        os.replace(tmp, target)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the URL's folder, unless another copy is there
            folder.rmdir()
        if not isinstance(err, Exception):
            raise  # KeyboardInterrupt and the like: clean up, then let it through
        raise PretrainedWeightsError(
            f"could not download weights {url} ({_first_line(err)}); without internet, "
            "download the file elsewhere and pass its local path instead"
        ) from err
    return target


def resolve_weights(
    source: str,
    cache_dir: str | Path | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """A local path holding the weights ``source`` names, downloading them when needed.

    Args:
        source: One of

            * a local file or folder (``~`` is expanded): returned as is;
            * an ``http://`` or ``https://`` URL: downloaded once into ``cache_dir`` (a folder
              per URL, the file under its own name), and read from there afterwards;
            * a Hugging Face hub repo, ``owner/name`` or ``hf-hub:owner/name``: fetched with
              ``huggingface_hub.snapshot_download`` into its own cache (``$HF_HUB_CACHE``). A
              name ending in a weights suffix (``weights/model.pth``) is taken for a missing
              file; write ``hf-hub:`` before a repo named like that.

        cache_dir: Where URLs are downloaded to; None: ``$AUDIO_CLS_CACHE/weights``, else
            ``~/.cache/audio-cls/weights``.
        allow_patterns: Which files of a hub repo to fetch; None: ``*.safetensors`` and
            ``*.json``, or the repo's ``pytorch_model.bin`` where it has no safetensors.

    Returns:
        The local file or folder.

    Raises:
        PretrainedWeightsError: The source does not exist, or could not be downloaded (the
            message says to download it elsewhere and pass the local copy).
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    if source.startswith(("http://", "https://")):
        return _download(source, cache_dir)
    repo = _hub_repo(source)
    if repo is not None:
        from huggingface_hub import snapshot_download

        patterns = allow_patterns or ["*.safetensors", "*.json"]
        try:
            folder = Path(snapshot_download(repo, allow_patterns=patterns))
            if allow_patterns is None and not any(folder.glob("*.safetensors")):
                # older repos (facebook/wav2vec2-base) hold only a pickled state dict
                bin_folder = Path(snapshot_download(repo, allow_patterns=["pytorch_model.bin"]))
                if (bin_folder / "pytorch_model.bin").is_file():
                    return bin_folder / "pytorch_model.bin"
            return folder
        except Exception as err:  # offline, unknown repo, HTTP and name errors alike
            raise PretrainedWeightsError(
                f"could not fetch weights {source!r} from the Hugging Face hub "
                f"({_first_line(err)}); without internet, download the repo elsewhere and pass "
                "its local folder instead"
            ) from err
    raise PretrainedWeightsError(
        f"weights {source!r} not found: no such file or folder ({path.absolute()}); pass an "
        "existing path, an https:// URL or a Hugging Face hub repo (owner/name)"
    )


# ---------------------------------------------------------------------------------------------
# Reading them


def _as_tensor(value: Any) -> torch.Tensor | None:
    """``value`` as a tensor when it is a tensor or a numeric numpy array/scalar, else None."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biufc":
        return None
    if not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    if not value.flags.c_contiguous:
        value = value.copy(order="C")  # (np.ascontiguousarray would make 0-d arrays 1-d)
    return torch.from_numpy(value)


def _flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, leaf) for every leaf of nested mappings; 0-d object arrays are opened."""
    if isinstance(tree, np.ndarray) and tree.dtype.hasobject and tree.ndim == 0:
        tree = tree.item()
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}{key}.")
    else:
        yield prefix.removesuffix("."), tree


def _tensors(path: Path, tree: Any) -> dict[str, torch.Tensor]:
    """The tensor leaves of ``tree`` under dotted names; other leaves are dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, leaf in _flatten(tree):
        tensor = _as_tensor(leaf)
        if tensor is None:
            continue
        key = key or path.stem  # a file holding one bare tensor
        if key in out:
            raise PretrainedWeightsError(
                f"{path}: the name {key!r} occurs twice once nested names are joined with '.'; "
                "re-save the weights with unique names"
            )
        out[key] = tensor
    return out


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            part = load_file(file)
        except Exception as err:  # SafetensorError, OSError, ... for a damaged file
            raise PretrainedWeightsError(
                f"{file}: unreadable safetensors file ({_first_line(err)}); it may be damaged or "
                "cut short: fetch it again"
            ) from err
        twice = sorted(state.keys() & part.keys())
        if twice:
            raise PretrainedWeightsError(
                f"{file}: {len(twice)} tensors (e.g. {twice[0]!r}) also occur in another "
                f".safetensors file of {path}; keep one set of files there, or pass one file"
            )
        state.update(part)
    return state


def _read_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        tree = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        # torch's own message may advise loading with code execution allowed: never pass it on.
        text = str(err)
        refused = re.search(r"unsupported (?:global: )?GLOBAL ([\w.]+)", text, re.IGNORECASE)
        if refused:
            reason = f"refused global {refused.group(1)}"
        else:
            detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
            lines = [detail.group(1)] if detail else []
            lines += [line.strip() for line in text.splitlines() if line.strip()]
            plain = [line for line in lines if "weights_only" not in line and "torch." not in line]
            reason = f"{type(err).__name__}: {plain[0]}" if plain else type(err).__name__
        raise PretrainedWeightsError(
            f"{path}: not a readable PyTorch weights file (or it holds objects other than "
            f"tensors, which are refused for safety): {reason}; re-save only its state_dict "
            "(or convert it to .safetensors) where it comes from"
        ) from None
    return _tensors(path, tree)


class _RefusedGlobalError(pickle.UnpicklingError):
    """A pickle asked for a global outside :class:`_NumpyOnlyUnpickler`'s short list."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes, scalars and dicts; any other global is refused.

    The globals a pickle names are the only way it can call code, so allowing just these
    constructors (numpy's own, as ``np.save`` writes them under numpy 1 and 2) keeps a file
    from running anything else.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            from numpy._core import multiarray
        except ImportError:  # numpy < 2
            from numpy.core import multiarray  # type: ignore[no-redef]

        allowed: dict[tuple[str, str], Any] = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("collections", "OrderedDict"): OrderedDict,
        }
        for package in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[package, "_reconstruct"] = multiarray._reconstruct
            allowed[package, "scalar"] = multiarray.scalar
        if (module, name) in allowed:
            return allowed[module, name]
        raise _RefusedGlobalError(f"{module}.{name}")


def _read_npy(path: Path) -> dict[str, torch.Tensor]:
    from numpy.lib import format as npy

    try:
        with path.open("rb") as f:
            version = npy.read_magic(f)
            if version == (1, 0):
                _, _, dtype = npy.read_array_header_1_0(f)
            elif version == (2, 0):
                _, _, dtype = npy.read_array_header_2_0(f)
            else:
                raise ValueError(f"npy format version {version} is not supported")
            if not dtype.hasobject:
                f.seek(0)
                tree: Any = {path.stem: np.load(f, allow_pickle=False)}
            else:
                array = _NumpyOnlyUnpickler(f, encoding="latin1").load()
                if not isinstance(array, np.ndarray) or array.ndim != 0:
                    raise ValueError("the pickled object is not a single dict of arrays")
                tree = array.item()
                if not isinstance(tree, Mapping):
                    raise ValueError(f"it holds a {type(tree).__name__}, not a dict of arrays")
    except _RefusedGlobalError as err:
        raise PretrainedWeightsError(
            f"{path}: refused global {err} (only numpy arrays, dtypes and dicts are unpickled, "
            "for safety); re-save its arrays as a dict of numpy arrays, or as .safetensors"
        ) from None
    except Exception as err:  # bad magic, truncated header or data, broken pickle
        raise PretrainedWeightsError(
            f"{path}: not a readable .npy weights file ({_first_line(err)}); it may be damaged "
            "or cut short: fetch it again"
        ) from err
    return _tensors(path, tree)


def _read_h5(path: Path) -> dict[str, torch.Tensor]:
    h5py = require("h5py", "weights", f"reading the HDF5 weights {path}")
    arrays: dict[str, Any] = {}

    def collect(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            arrays[name.lstrip("/")] = obj[()]

    try:
        with h5py.File(path, "r") as f:
            f.visititems(collect)
    except Exception as err:  # OSError for a file that is not HDF5 or is cut short
        raise PretrainedWeightsError(
            f"{path}: not a readable HDF5 weights file ({_first_line(err)}); it may be damaged "
            "or cut short: fetch it again"
        ) from err
    out: dict[str, torch.Tensor] = {}
    for key, value in arrays.items():
        tensor = _as_tensor(value)
        if tensor is not None:
            out[key] = tensor
    return out


_READERS = {
    "safetensors": _read_safetensors,
    "torch": _read_torch,
    "npy": _read_npy,
    "h5": _read_h5,
}


def read_weights(source: str | Path, format: WeightFormat | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a local weights file or folder, under flat names.

    Nested dicts are flattened with ``"."`` (``{"state_dict": {"a.b": t}}`` gives
    ``state_dict.a.b``; strip such prefixes with ``load_into(rename=...)``); leaves that are
    not tensors or numeric arrays (step counts, names, lists) are dropped. HDF5 datasets keep
    their full path (``layer1/conv/kernel:0``). Numpy arrays are shared, not copied.

    Args:
        source: A local path, e.g. from :func:`resolve_weights`.
        format: The format; None: told by :func:`weight_format`.

    Returns:
        ``{name: tensor}``, tensors on the CPU.

    Raises:
        PretrainedWeightsError: The path is missing, empty, damaged or of another format, holds
            no tensors, or holds objects other than tensors and arrays (refused: unpickling them
            could run code).
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise PretrainedWeightsError(
            f"{path}: weights not found; pass an existing file or folder "
            "(resolve_weights fetches URLs and hub repos)"
        )
    fmt = format if format is not None else weight_format(path)
    if fmt not in _READERS:
        raise PretrainedWeightsError(
            f"{path}: unknown weights format {fmt!r}; pass one of "
            f"{', '.join(get_args(WeightFormat))}"
        )
    if path.is_dir() and fmt != "safetensors":
        raise PretrainedWeightsError(
            f"{path}: a folder, but only folders of .safetensors files are read; pass the file"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise PretrainedWeightsError(
            f"{path}: empty file (0 bytes); the download or copy was cut short: fetch it again"
        )
    state = _READERS[fmt](path)
    if not state:
        raise PretrainedWeightsError(
            f"{path}: no tensors in this {fmt} file; is it the weights file you meant?"
        )
    return state


def fetch_state_dict(source: str) -> dict[str, torch.Tensor]:
    """All tensors of published weights: ``read_weights(resolve_weights(source))``.

    Args:
        source: A local file or folder, an ``https://`` URL or a Hugging Face hub repo.

    Raises:
        PretrainedWeightsError: Nothing could be fetched or read; the message names ``source``
            and what to do.
    """
    return read_weights(resolve_weights(source))


# ---------------------------------------------------------------------------------------------
# Loading them into a model


@dataclass
class LoadReport:
    """What :func:`load_into` did, by our parameter and buffer names.

    Attributes:
        loaded: Names loaded from the checkpoint.
        missing: Names the model has (and were asked for) that the checkpoint lacks.
        unexpected: Checkpoint names (after renaming) the model does not have.
        mismatched: Names in both with other shapes, as
            ``"head.fc.weight: checkpoint (527, 2048) vs model (10, 2048)"``.
    """

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]


def rename_key(key: str, rename: Sequence[tuple[str, str | None]]) -> str | None:
    """``key`` after the first matching (prefix, new prefix) pair; None when it is dropped."""
    for source, target in rename:
        if key.startswith(source):
            return None if target is None else target + key[len(source) :]
    return key


def _listing(title: str, names: list[str]) -> list[str]:
    if not names:
        return []
    lines = [f"  {title}:"] + [f"    {name}" for name in names[:_LIST_AT_MOST]]
    if len(names) > _LIST_AT_MOST:
        lines.append(f"    ... and {len(names) - _LIST_AT_MOST} more")
    return lines


def load_into(
    module: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    *,
    rename: Sequence[tuple[str, str | None]] = (),
    drop: Sequence[str] = (),
    only: Sequence[str] | None = None,
    strict: bool = True,
    what: str = "weights",
    dry_run: bool = False,
) -> LoadReport:
    """Load checkpoint tensors into ``module`` by name, saying exactly what does not fit.

    Args:
        module: The model; compared with its ``state_dict()`` (parameters and buffers).
        weights: Checkpoint tensors, e.g. from :func:`read_weights`.
        rename: Ordered ``(checkpoint_prefix, our_prefix)`` pairs: the first prefix a checkpoint
            name starts with is replaced (``("model.", "")`` strips ``model.``; an ``our_prefix``
            of None drops those names); names matching no pair keep theirs.
        drop: Prefixes of our names to leave out, e.g. ``["head.fc."]`` when the class count
            differs; checkpoint names under them are ignored too.
        only: If given, only names under these prefixes are loaded or reported; others, ours
            and the checkpoint's, are ignored.
        strict: Raise unless every considered name is present on both sides with equal shapes;
            False: load what fits and report the rest.
        what: How messages name the weights, e.g. ``"AudioSet CNN14 weights (cnn14.pth)"``.
        dry_run: Only compare and report (raising as ``strict`` says); load nothing.

    Returns:
        What was loaded, missing, unexpected and mis-shaped. Tensors are converted to the
        dtype of the model's own.

    Raises:
        PretrainedWeightsError: With ``strict``, anything does not fit (nothing is loaded then):
            the first line counts the problems, indented lines list up to ten of each kind.
            Also when ``rename`` maps two checkpoint names onto one.
    """
    checkpoint: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in weights.items():
        name = rename_key(key, rename)
        if name is None:
            continue
        if name in checkpoint:
            raise PretrainedWeightsError(
                f"{what}: rename maps both {origin[name]!r} and {key!r} to {name!r}; "
                "make the rename prefixes tell them apart"
            )
        checkpoint[name] = tensor
        origin[name] = key

    def considered(name: str) -> bool:
        if any(name.startswith(prefix) for prefix in drop):
            return False
        return only is None or any(name.startswith(prefix) for prefix in only)

    state = module.state_dict()
    ours = {name: t for name, t in state.items() if considered(name)}
    wanted = {name: t for name, t in checkpoint.items() if considered(name)}
    missing = [name for name in ours if name not in wanted]
    unexpected = [name for name in wanted if name not in state]
    loaded: list[str] = []
    mismatched: list[str] = []
    for name, own in ours.items():
        if name not in wanted:
            continue
        theirs = wanted[name]
        if theirs.shape != own.shape:
            mismatched.append(
                f"{name}: checkpoint {tuple(theirs.shape)} vs model {tuple(own.shape)}"
            )
        else:
            loaded.append(name)
    if strict and (missing or unexpected or mismatched):
        lines = [
            f"{what} do not fit the model: {len(missing)} missing, {len(unexpected)} "
            f"unexpected, {len(mismatched)} mis-shaped; map checkpoint names with rename=, leave "
            "layers out with drop= or only=, or load what fits with strict=False"
        ]
        lines += _listing("missing (in the model, not in the checkpoint)", missing)
        lines += _listing("unexpected (in the checkpoint, not in the model)", unexpected)
        lines += _listing("mis-shaped", mismatched)
        raise PretrainedWeightsError("\n".join(lines))
    report = LoadReport(loaded, missing, unexpected, mismatched)
    if not dry_run:
        subset = {name: wanted[name].to(dtype=ours[name].dtype) for name in loaded}
        module.load_state_dict(subset, strict=False)
    return report
