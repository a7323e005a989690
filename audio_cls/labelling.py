"""Labels from a model's scores: soft and hard pseudo-labels, a confidence split, manifests.

Public, with signatures kept stable (``audio-cls label`` and the student's pseudo-labelling
rounds share them):

- :func:`soft_labels`: ``softmax(scores / temperature)``, scores ``(N, C)`` -> ``(N, C)``;
- :func:`hard_labels`: top-1 class and its probability (the confidence) per row;
- :func:`split_by_confidence`: the rows whose confidence reaches a threshold;
- :class:`LabelRow` and :func:`write_label_manifest`: a ``path,label,confidence,prob_<class>``
  CSV (plus ``fold`` and ``clip_id`` when the rows carry them) that
  :class:`audio_cls.data.sources.manifest.CSVManifest` reads back as soft (or hard) labels, and
  the unsure rows in a file of their own beside it (:func:`unsure_path`);
- :func:`name_teacher_classes`: point a ``text_teacher`` at class names of one's choosing (a
  clear error for any other model);
- :func:`label_clips`: soft labels of audio files, folders, CSV manifests or data-module clips
  from any checkpoint (a ``text_teacher`` under new class names, or an ordinary classifier),
  through the inference core's :class:`~audio_cls.inference.Predictor`, as
  :class:`LabelledClips`.

The arithmetic and the writer need neither Lightning nor a model; :func:`label_clips` imports
the model side only when called.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from audio_cls.data.sources.base import Clip
from audio_cls.data.sources.manifest import PROB_PREFIX
from audio_cls.inference import Predictor, TimeShiftTTA, WindowSettings

if TYPE_CHECKING:
    from audio_cls.inference import Aggregation, Precision

__all__ = [
    "LabelManifest",
    "LabelRow",
    "LabelledClips",
    "hard_labels",
    "label_clips",
    "name_teacher_classes",
    "soft_labels",
    "split_by_confidence",
    "unsure_path",
    "write_label_manifest",
]


# ---------------------------------------------------------------------- the arithmetic
def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {temperature}")


def soft_labels(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Soft labels ``softmax(scores / temperature)`` ``(N, C)`` (float32) of scores ``(N, C)``.

    Below 1 the labels sharpen towards the top class, above 1 they flatten towards uniform.

    Raises:
        ValueError: ``temperature`` is not positive.
    """
    _check_temperature(temperature)
    return (torch.as_tensor(scores).float() / temperature).softmax(-1)


def hard_labels(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 labels of probabilities ``(N, C)``: ``(class index (N,), confidence (N,))``, the
    confidence being the top class's probability (ties go to the first class)."""
    confidence, index = torch.as_tensor(probs).float().max(-1)
    return index, confidence


def split_by_confidence(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mask ``(N,)`` of the rows that are sure: confidence at or above ``threshold`` in [0, 1]
    (0 keeps every row).

    Raises:
        ValueError: ``threshold`` is outside [0, 1].
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
    return torch.as_tensor(confidence) >= threshold


# ---------------------------------------------------------------------- manifests
@dataclass(frozen=True)
class LabelRow:
    """One clip to write into a label manifest.

    Attributes:
        path: Its audio file.
        probs: Its probability per class (a soft label), in class order.
        clip_id: Its clip id, kept in a ``clip_id`` column (None: none written).
        fold: Its fold, kept in a ``fold`` column (None: an empty cell, dealt by the reader).
    """

    path: Path
    probs: Sequence[float]
    clip_id: str | None = None
    fold: int | str | None = None


@dataclass(frozen=True)
class LabelManifest:
    """What :func:`write_label_manifest` wrote.

    Attributes:
        path: The manifest of sure clips.
        unsure: The manifest of clips below the threshold (same columns).
        num_sure: Rows in ``path``.
        num_unsure: Rows in ``unsure``.
    """

    path: Path
    unsure: Path
    num_sure: int
    num_unsure: int


def unsure_path(path: str | Path) -> Path:
    """Where the unsure clips of manifest ``path`` go: ``<stem>_unsure<suffix>`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}_unsure{path.suffix or '.csv'}")


def _path_cell(path: Path, base: Path) -> str:
    """``path`` relative to the manifest's folder when below it (the pair moves together),
    else absolute: the reader takes paths relative to the CSV's folder."""
    full = Path(os.path.abspath(path))
    try:
        return full.relative_to(Path(os.path.abspath(base))).as_posix()
    except ValueError:
        return full.as_posix()


def write_label_manifest(
    path: str | Path,
    rows: Sequence[LabelRow],
    class_names: Sequence[str],
    threshold: float = 0.0,
    soft: bool = True,
) -> LabelManifest:
    """Write ``rows`` as a label manifest, the rows below ``threshold`` into :func:`unsure_path`.

    Columns: ``path`` (relative to the manifest's folder when below it, else absolute),
    ``label`` (the top class), ``confidence`` (its probability), ``fold`` and ``clip_id`` when
    any row carries one, then one ``prob_<class>`` column per class (with ``soft``; without it
    the manifest is hard labels only). Both files are written, the unsure one with a header only
    when every row is sure, so a stale file of an earlier run never lingers beside them.

    Args:
        path: The manifest to write (its folder is created).
        rows: The clips and their probabilities.
        class_names: Class names in the probabilities' order.
        threshold: Confidence below which a row is unsure (0: none is).
        soft: Write the ``prob_<class>`` columns (soft labels) or only ``label`` (hard labels).

    Raises:
        ValueError: No class names, a row of another width, or a threshold outside [0, 1].
    """
    names = list(class_names)
    if not names:
        raise ValueError("a label manifest needs at least one class name")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat: {names}")
    path = Path(path)
    widths = {len(r.probs) for r in rows}
    if widths - {len(names)}:
        raise ValueError(
            f"rows have {max(widths - {len(names)})} probabilities but there are {len(names)} "
            f"class names"
        )
    # no rows (every clip unreadable) still writes both files, header only
    probs = torch.tensor([list(r.probs) for r in rows], dtype=torch.float32).reshape(-1, len(names))
    index, confidence = hard_labels(probs)
    sure = split_by_confidence(confidence, threshold)
    with_fold = any(r.fold is not None for r in rows)
    with_id = any(r.clip_id is not None for r in rows)
    header = ["path", "label", "confidence"]
    header += ["fold"] * with_fold + ["clip_id"] * with_id
    header += [PROB_PREFIX + n for n in names] if soft else []
    path.parent.mkdir(parents=True, exist_ok=True)
    unsure = unsure_path(path)
    base = path.parent
    with path.open("w", newline="") as f_sure, unsure.open("w", newline="") as f_unsure:
        writers = {True: csv.writer(f_sure), False: csv.writer(f_unsure)}
        for w in writers.values():
            w.writerow(header)
        for i, row in enumerate(rows):
            cells = [_path_cell(row.path, base), names[int(index[i])], f"{confidence[i]:.6f}"]
            if with_fold:
                cells.append("" if row.fold is None else str(row.fold))
            if with_id:
                cells.append(row.clip_id or "")
            if soft:
                cells += [f"{float(p):.6f}" for p in probs[i]]
            writers[bool(sure[i])].writerow(cells)
    num_sure = int(sure.sum())
    return LabelManifest(path, unsure, num_sure, len(rows) - num_sure)


# ---------------------------------------------------------------------- labelling with a model
@dataclass
class LabelledClips:
    """Soft labels of a set of clips (what :func:`label_clips` returns).

    Attributes:
        class_names: The classes, in the probabilities' order.
        clip_ids: One per clip, in input order.
        paths: Their files.
        probs: Soft labels ``(N, C)``; all-zero rows for clips in ``errors``.
        folds: The fold each clip's input carried (a manifest's ``fold`` cell, a data-module
            clip's fold), else None.
        carried_ids: Whether each clip's id came with the input (a ``clip_id`` column, a
            data-module clip) rather than from its file name.
        errors: Clip id -> why it could not be labelled (unreadable file, ...).
        warnings: Clip id -> why its label means little (silent, very short).
    """

    class_names: list[str]
    clip_ids: list[str]
    paths: list[Path]
    probs: torch.Tensor
    folds: list[int | str | None]
    carried_ids: list[bool]
    errors: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[LabelRow]:
        """The clips that were labelled, as rows for :func:`write_label_manifest`."""
        return [
            LabelRow(path, probs.tolist(), clip_id if carried else None, fold)
            for clip_id, path, probs, fold, carried in zip(
                self.clip_ids, self.paths, self.probs, self.folds, self.carried_ids
            )
            if clip_id not in self.errors
        ]


class _Tempered(nn.Module):
    """A model's logits divided by a temperature, so that the inference core's softmax of each
    window is :func:`soft_labels` of its scores."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.model(waveform) / self.temperature


def _manifest_cells(csv_path: Path) -> dict[Path, tuple[str | None, bool]]:
    """``file -> (fold cell or None, has a clip_id cell)`` of the rows of a CSV input."""
    from audio_cls.data.sources._common import read_csv_table

    _, table = read_csv_table(csv_path, ("path",))
    return {
        csv_path.parent / row["path"]: (row.get("fold") or None, bool(row.get("clip_id")))
        for _, row in table
        if row["path"]
    }


@dataclass(frozen=True)
class _Input:
    clip: Clip
    fold: int | str | None  # as the input gave it (None: it gave none)
    carried_id: bool  # the clip id came with the input, not from the file name


def _gather(inputs: Sequence[str | Path] | Sequence[Clip], class_names: list[str]) -> list[_Input]:
    """The clips of ``inputs``, with the folds and clip ids the inputs carry."""
    if inputs and all(isinstance(c, Clip) for c in inputs):
        return [_Input(c, c.fold, True) for c in inputs]  # type: ignore[union-attr]
    from audio_cls.data.sources.files import AudioFiles

    given = [Path(p) for p in inputs]  # type: ignore[arg-type]
    cells: dict[Path, tuple[str | None, bool]] = {}
    for p in given:
        if p.suffix.lower() == ".csv" and p.is_file():
            cells.update(_manifest_cells(p))
    # classify's gathering; it leaves every fold 0 (its prediction fold), so a manifest's own
    # fold is looked up by file
    clips = AudioFiles([str(p) for p in given], class_names=class_names).manifest(Path(".")).clips
    return [_Input(c, *cells.get(c.path, (None, False))) for c in clips]


def name_teacher_classes(
    model: nn.Module, labels: str | Sequence[str], where: str, option: str = "--labels"
) -> list[str]:
    """Make the ``text_teacher`` ``model`` score ``labels`` (``"a, b, c"`` or a list); returns
    the names. Their text embeddings come from the teacher's recorded text model and prompts.

    Raises:
        ValueError: ``model`` is not a text teacher (one line naming ``where`` and ``option``),
            or the names are empty or repeated.
    """
    from audio_cls.text import parse_names

    names = parse_names(labels, option)
    if not callable(getattr(model, "set_class_names", None)):
        family = getattr(model, "registry_name", "") or type(model).__name__
        raise ValueError(
            f"{option} needs a text_teacher checkpoint, which scores class names by their text; "
            f"{where} is a {family} classifier of its own classes ({', '.join(model.class_names)}): "
            f"leave {option} out, or train a teacher (model: audio_cls.models.TextTeacher)"
        )
    model.set_class_names(names)
    return names


def label_clips(
    model: str | Path | nn.Module,
    inputs: Sequence[str | Path] | Sequence[Clip],
    classes: str | Sequence[str] | None = None,
    temperature: float = 1.0,
    windows: WindowSettings | None = None,
    batch_size: int = 64,
    aggregation: Aggregation = "mean",
    tta: int = 1,
    device: str = "auto",
    limit: int | None = None,
    precision: Precision = "auto",
) -> LabelledClips:
    """Soft labels of every clip in ``inputs`` from ``model``, through the inference core.

    Each window's logits are divided by ``temperature`` before the softmax (for a
    ``text_teacher`` its logits are already cosine similarities over its own temperature), and
    the windows' probabilities are aggregated per clip. A file that cannot be read is listed in
    ``errors`` while the others are labelled.

    Args:
        model: A checkpoint (``.ckpt`` of ``audio-cls fit``) or a model in memory (an
            ``AudioClassifier``; it is left in eval mode on ``device``, and a ``text_teacher``
            given ``classes`` is renamed in place).
        inputs: Audio files, folders or CSV manifests (their ``fold`` and ``clip_id`` cells are
            kept), as ``classify`` takes them; or ``Clip`` objects of a data module's manifest
            (their fold and clip id kept).
        classes: Class names to label with (``"a, b, c"`` or a list). A ``text_teacher``
            scores any names (its class text embeddings are recomputed with its recorded text
            model and prompts); another model only its own classes (a subset or another order
            is fine). None: the model's own classes.
        temperature: Softmax temperature on the model's logits (1: the model's probabilities).
        windows: How clips are cut (None: the checkpoint's settings, or 0.96 s windows with a
            half-window hop at the model's rate for a model in memory).
        batch_size: Windows per forward pass.
        aggregation: Window -> clip: ``mean``, ``logit_mean``, ``max`` or ``vote``.
        tta: Time-shifted copies averaged per window (1: off).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        limit: Only the first N clips.
        precision: ``auto``, ``32`` or ``bf16``: the inference core's
            (:class:`~audio_cls.inference.Predictor`).

    Raises:
        ValueError: Empty or repeated ``classes``, classes an ordinary classifier does not
            have, a bad temperature; ``CheckpointMismatchError`` for an unreadable checkpoint.
    """
    from audio_cls.inference import collect

    _check_temperature(temperature)
    if isinstance(model, (str, Path)):
        from audio_cls.models import load_classifier

        net, section = load_classifier(model)
        windows = windows or WindowSettings.from_section(section, net.sample_rate)
        where = f"--ckpt {model}"
    else:
        net, where = model, f"the {type(model).__name__} model"
        windows = windows or WindowSettings(net.sample_rate)
    from audio_cls.text import parse_names

    own = list(net.class_names)
    names = own if classes is None else parse_names(classes, "--classes")
    pick: list[int] | None = None
    if names != own:
        if callable(getattr(net, "set_class_names", None)):
            name_teacher_classes(net, names, where, "--classes")
        elif set(names) <= set(own):
            pick = [own.index(n) for n in names]
        else:
            unknown = [n for n in names if n not in own]
            raise ValueError(
                f"{where} is a {getattr(net, 'registry_name', '') or 'classifier'} trained on "
                f"{', '.join(own)}; it cannot score {', '.join(unknown)}: only a text_teacher "
                f"checkpoint labels with class names of your choice (leave --classes out for "
                f"its own classes, or give some of them)"
            )
    predictor = Predictor(
        _Tempered(net, temperature),
        windows,
        batch_size=batch_size,
        tta=TimeShiftTTA(tta) if tta > 1 else None,
        aggregation=aggregation,
        device=device,
        precision=precision,
    )
    clips = _gather(inputs, names if pick is None else own)[:limit]
    predictions = list(predictor.predict_files((c.clip.clip_id, c.clip.path) for c in clips))
    results = collect(predictions, len(own) if pick is not None else len(names))
    probs = results.probs
    if pick is not None:  # a subset of a classifier's classes, renormalised over it
        probs = probs[:, pick]
        probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-12)
    return LabelledClips(
        class_names=names,
        clip_ids=[c.clip.clip_id for c in clips],
        paths=[c.clip.path for c in clips],
        probs=probs,
        folds=[c.fold for c in clips],
        carried_ids=[c.carried_id for c in clips],
        errors=results.errors,
        warnings=results.warnings,
    )
