"""Gradient-boosted trees on embeddings: LightGBM (plus an optional small MLP) without Lightning.

Reads the Parquet file of ``audio-cls embed`` (one row per window and per clip statistic, see
:func:`open_embeddings`), splits it by folds, fits LightGBM (Ke et al., "LightGBM: A Highly
Efficient Gradient Boosting Decision Tree", NeurIPS 2017; the ``lightgbm`` package, MIT
licence) with early stopping on the multiclass log-loss of the validation folds, predicts the
test folds and aggregates window probabilities per clip with the inference core
(:func:`audio_cls.inference.aggregate_clips`). The reports are the neural runs' own
(:mod:`audio_cls.reports`), so both kinds of run read alike.

:func:`run_boost` is what ``audio-cls boost`` and ``audio-cls cv`` call. It writes into
``out_dir``:

- ``metrics_test.json`` (``test/acc``, ``test/macro_f1``, ``test/precision``, ``test/recall``,
  ``test/loss`` on windows; ``test/clip_acc``, ``test/clip_macro_f1`` on clips) and
  ``metrics_val.json`` (the same keys for the validation folds at the best iteration, and the
  validation log-loss of every iteration); with ``ensemble`` the members' metrics too, under
  ``test/lightgbm/...`` and ``test/mlp/...``, the plain keys being the ensemble's;
- ``predictions.csv``, ``classification_report.csv``, ``confusion_matrix.png`` (clip level);
- ``feature_importance.csv`` (gain and split count of every feature, by gain),
  ``lightgbm.txt`` (the booster, trimmed to its best iteration), ``mlp.pt`` with ``ensemble``,
  and ``boost.json`` (class names, folds, options, best iteration, fit times, the file's
  ``audio_cls`` metadata): what it takes to use the models again.

Folds: each fold belongs to one split. Without fold lists, the file's folds decide: exactly
1-10 is UrbanSound8K (1-8 train, 9 validation, 10 test), exactly 1-5 is ESC-50 (1-3, 4, 5);
any other file needs all three lists. An empty validation list trains ``n_estimators`` trees
(and ``mlp_epochs`` epochs) without early stopping.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from audio_cls.embeddings import COLUMNS, LEVELS, META_KEY, arrow, read_table
from audio_cls.extras import require
from audio_cls.inference import AGGREGATIONS, Aggregation, ClipResults, aggregate_clips
from audio_cls.reports import write_metrics, write_test_reports

__all__ = [
    "FEATURES",
    "BoostOptions",
    "EmbeddingFile",
    "MLPClassifier",
    "Rows",
    "default_folds",
    "fit_lightgbm",
    "fit_mlp",
    "open_embeddings",
    "run_boost",
]

log = logging.getLogger(__name__)

Features = Literal["window", "clip", "clip_stats"]
FEATURES: tuple[str, ...] = ("window", "clip", "clip_stats")
#: Fold conventions recognised when no fold lists are given: file folds -> (train, val, test).
CONVENTIONS: dict[tuple[int, ...], tuple[list[int], list[int], list[int]]] = {
    tuple(range(1, 11)): (list(range(1, 9)), [9], [10]),  # UrbanSound8K
    tuple(range(1, 6)): ([1, 2, 3], [4], [5]),  # ESC-50
}


#: The rows each kind of features is made of.
SOURCE_LEVELS = {"window": "window", "clip": "mean", "clip_stats": "mean, std and max"}


@dataclass(frozen=True)
class BoostOptions:
    """How :func:`run_boost` trains and reports; ``audio-cls boost`` takes the same options.

    Attributes:
        features: ``window``: train on window rows, clip scores aggregate window probabilities;
            ``clip``: train and predict on each clip's ``mean`` row; ``clip_stats``: on its
            ``mean``, ``std`` and ``max`` rows side by side (3 x D features). The clip kinds
            have no window metrics.
        aggregation: Window probabilities -> clip probabilities: ``mean``, ``logit_mean``,
            ``max`` or ``vote`` (``features: window`` only).
        num_leaves: Largest number of leaves per tree.
        learning_rate: Shrinkage of each tree.
        n_estimators: Most boosting rounds (one tree per class each); early stopping on the
            validation folds usually ends sooner.
        early_stopping_rounds: Rounds without a lower validation log-loss before stopping.
        feature_fraction: Share of features each tree may use.
        bagging_fraction: Share of training rows each tree sees (1: all).
        bagging_freq: Redraw the rows every this many rounds (0: no bagging).
        min_data_in_leaf: Fewest training rows per leaf.
        lambda_l2: L2 regularisation of leaf values.
        class_balanced: Weight training rows by the inverse frequency of their class.
        seed: Seed of LightGBM (bagging, feature sampling) and of the MLP; with the same
            ``num_threads`` the same seed gives the same predictions.
        num_threads: CPU threads of LightGBM and the MLP (0: LightGBM's and torch's default).
            On a machine busy with other jobs, set ``OMP_WAIT_POLICY=PASSIVE``: LightGBM's
            OpenMP threads otherwise spin while they wait, many times slower.
        ensemble: Also train a small MLP on standardised features and average its window
            probabilities with LightGBM's.
        mlp_weight: The MLP's share of the ensemble's probabilities (LightGBM has the rest).
        mlp_hidden: Width of the MLP's hidden layer.
        mlp_epochs: Most epochs of the MLP.
        mlp_patience: Epochs without a lower validation loss before the MLP stops.
        mlp_lr: The MLP's learning rate (AdamW).
        top_k: Classes listed per clip in ``predictions.csv``.
    """

    features: Features = "window"
    aggregation: Aggregation = "mean"
    num_leaves: int = 31
    learning_rate: float = 0.1
    n_estimators: int = 1000
    early_stopping_rounds: int = 50
    feature_fraction: float = 0.5
    bagging_fraction: float = 0.8
    bagging_freq: int = 1
    min_data_in_leaf: int = 20
    lambda_l2: float = 1.0
    class_balanced: bool = False
    seed: int = 0
    num_threads: int = 0
    ensemble: bool = False
    mlp_weight: float = 0.5
    mlp_hidden: int = 256
    mlp_epochs: int = 100
    mlp_patience: int = 10
    mlp_lr: float = 1e-3
    top_k: int = 3

    def __post_init__(self) -> None:
        choices = {"features": FEATURES, "aggregation": AGGREGATIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )
        ranges = {
            "num_leaves": (2, None),
            "n_estimators": (1, None),
            "early_stopping_rounds": (1, None),
            "bagging_freq": (0, None),
            "min_data_in_leaf": (1, None),
            "lambda_l2": (0, None),
            "num_threads": (0, None),
            "mlp_weight": (0, 1),
            "mlp_hidden": (1, None),
            "mlp_epochs": (1, None),
            "mlp_patience": (1, None),
            "top_k": (1, None),
        }
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not (value >= low and (high is None or value <= high)):
                bound = f"between {low} and {high}" if high is not None else f">= {low}"
                raise ValueError(f"--{name} must be {bound}, got {value}")
        for name in ("learning_rate", "mlp_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} must be > 0, got {getattr(self, name)}")
        for name in ("feature_fraction", "bagging_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"--{name} must be in (0, 1], got {getattr(self, name)}")


# ---------------------------------------------------------------------- reading
@dataclass
class Rows:
    """Rows of an embeddings file as arrays, in file order.

    Attributes:
        clip_ids: Clip of each row.
        paths: Audio file of each row.
        folds: ``(N,)`` fold, -1 where unknown.
        targets: ``(N,)`` class index, -1 where unlabelled.
        starts: ``(N,)`` start of the window in seconds.
        features: ``(N, D)`` float32 embeddings.
        feature_names: ``D`` column names.
    """

    clip_ids: list[str]
    paths: list[str]
    folds: np.ndarray
    targets: np.ndarray
    starts: np.ndarray
    features: np.ndarray
    feature_names: list[str]

    def take(self, mask: np.ndarray) -> Rows:
        index = np.flatnonzero(mask)
        return Rows(
            [self.clip_ids[i] for i in index],
            [self.paths[i] for i in index],
            self.folds[index],
            self.targets[index],
            self.starts[index],
            self.features[index],
            self.feature_names,
        )


@dataclass
class EmbeddingFile:
    """An embeddings table with its class names and ``audio_cls`` metadata.

    Attributes:
        table: The pyarrow table.
        name: How messages name it (the file's path).
        class_names: The classes ``target`` indexes.
        metadata: The ``audio_cls`` schema metadata (tap, model, window settings, ...).
        dim: Embedding size D.
    """

    table: Any
    name: str
    class_names: list[str]
    metadata: dict[str, Any]
    dim: int

    @property
    def folds(self) -> list[int]:
        """The known folds of the file's rows, sorted."""
        folds = np.unique(self.table.column("fold").to_numpy())
        return [int(f) for f in folds if f >= 0]

    def rows(self, level: str, folds: Sequence[int] | None = None) -> Rows:
        """The rows of one ``level`` (``window``, ``mean``, ``std``, ``max``) in ``folds``."""
        pa = arrow()
        pc = require("pyarrow.compute", "boost", "reading embeddings")
        mask = pc.equal(self.table.column("level"), pa.scalar(level))
        if folds is not None:
            mask = pc.and_(mask, pc.is_in(self.table.column("fold"), pa.array(folds, pa.int64())))
        table = self.table.filter(mask)
        names = [f"emb_{i}" for i in range(self.dim)]
        features = np.empty((table.num_rows, self.dim), dtype=np.float32)
        for i, name in enumerate(names):
            features[:, i] = table.column(name).to_numpy()
        return Rows(
            table.column("clip_id").to_pylist(),
            table.column("path").to_pylist(),
            table.column("fold").to_numpy().astype(np.int64),
            table.column("target").to_numpy().astype(np.int64),
            table.column("start_sec").to_numpy().astype(np.float64),
            features,
            names,
        )


def open_embeddings(source: Any) -> EmbeddingFile:
    """Read and check an embeddings file (a path) or table (a ``pyarrow.Table``).

    The layout is ``audio-cls embed``'s: columns ``clip_id``, ``path``, ``fold`` (-1 when
    unknown), ``label``, ``target`` (-1 when unlabelled), ``level`` (``window``, ``mean``,
    ``std``, ``max``), ``start_sec``, ``end_sec`` and ``emb_0 .. emb_{D-1}``; the schema metadata
    key ``audio_cls`` holds JSON with at least ``class_names``.
    """
    pa = arrow()
    if isinstance(source, pa.Table):
        table, name = source, "the embeddings table"
    else:
        name = str(source)
        try:  # the file, or the shards of several processes in rank order
            table = read_table(Path(source))
        except FileNotFoundError:
            raise ValueError(
                f"--embeddings {name}: no such file (nor its shards); write one with "
                f"`audio-cls embed`"
            ) from None
        except (pa.ArrowException, OSError) as err:
            raise ValueError(
                f"--embeddings {name} is not a readable Parquet file ({err})"
            ) from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    emb = [c for c in table.column_names if c.startswith("emb_")]
    if missing or not emb:
        what = ", ".join(missing + ([] if emb else ["emb_0 .."]))
        raise ValueError(
            f"{name} lacks the column(s) {what}: it is not a file of `audio-cls embed`"
        )
    if emb != [f"emb_{i}" for i in range(len(emb))]:
        raise ValueError(
            f"{name}: the embedding columns must be emb_0 .. emb_{len(emb) - 1} in order, got "
            f"{emb[:3]} ..."
        )
    raw = (table.schema.metadata or {}).get(META_KEY.encode())
    try:
        metadata = json.loads(raw) if raw is not None else None
        class_names = [str(c) for c in metadata["class_names"]]
    except (TypeError, KeyError, ValueError):
        raise ValueError(
            f"{name} has no class names (schema metadata 'audio_cls' with 'class_names'): "
            f"write it with `audio-cls embed`"
        ) from None
    levels = set(table.column("level").unique().to_pylist())
    if levels - set(LEVELS):
        raise ValueError(
            f"{name} has rows of level(s) {sorted(levels - set(LEVELS))}; known levels: "
            f"{', '.join(LEVELS)}"
        )
    targets = table.column("target").to_numpy()
    if targets.size and (targets.min() < -1 or targets.max() >= len(class_names)):
        raise ValueError(
            f"{name}: targets must be -1 (unlabelled) or class indices below "
            f"{len(class_names)} (its class_names), got {int(targets.min())}..{int(targets.max())}"
        )
    return EmbeddingFile(table, name, class_names, metadata, len(emb))


# ---------------------------------------------------------------------- folds
def _span(folds: Sequence[int]) -> str:
    folds = sorted(folds)
    if folds and folds == list(range(folds[0], folds[-1] + 1)) and len(folds) > 2:
        return f"{folds[0]}-{folds[-1]}"
    return ", ".join(map(str, folds)) or "none"


def default_folds(
    file_folds: Sequence[int],
    train: Sequence[int] | None,
    val: Sequence[int] | None,
    test: Sequence[int] | None,
    name: str = "the embeddings",
) -> tuple[list[int], list[int], list[int]]:
    """Train, validation and test folds: the given lists, checked, or the file's convention.

    All three lists or none: without them, a file whose folds are exactly 1-10 is split as
    UrbanSound8K (1-8/9/10), exactly 1-5 as ESC-50 (1-3/4/5); other files need the lists.
    The validation list may be empty (no early stopping); the others may not.
    """
    given = [f is not None for f in (train, val, test)]
    if not any(given):
        plan = CONVENTIONS.get(tuple(sorted(file_folds)))
        if plan is None:
            raise ValueError(
                f"{name} has folds {_span(file_folds)}: give --train_folds, --val_folds and "
                f"--test_folds (defaults exist only for folds exactly 1-10, UrbanSound8K "
                f"1-8/9/10, and 1-5, ESC-50 1-3/4/5)"
            )
        return tuple(list(f) for f in plan)  # type: ignore[return-value]
    if not all(given):
        absent = [n for n, g in zip(("train", "val", "test"), given, strict=True) if not g]
        raise ValueError(
            f"give --train_folds, --val_folds and --test_folds together (missing: "
            f"{', '.join(f'--{a}_folds' for a in absent)}); --val_folds [] trains without "
            f"early stopping"
        )
    train, val, test = (sorted({int(f) for f in x}) for x in (train, val, test))  # type: ignore[union-attr]
    for option, folds in (("--train_folds", train), ("--test_folds", test)):
        if not folds:
            raise ValueError(f"{option} is empty: name at least one fold")
    splits = {"--train_folds": train, "--val_folds": val, "--test_folds": test}
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            shared = sorted(set(splits[a]) & set(splits[b]))
            if shared:
                raise ValueError(
                    f"fold(s) {_span(shared)} are in both {a} and {b}: each fold belongs to one "
                    f"split"
                )
    for option, folds in splits.items():
        absent = sorted(set(folds) - set(file_folds))
        if absent:
            raise ValueError(
                f"{option}: {name} has no rows in fold(s) {_span(absent)} (its folds: "
                f"{_span(file_folds)})"
            )
    return train, val, test


# ---------------------------------------------------------------------- features
def _clip_stats(data: EmbeddingFile, folds: Sequence[int]) -> Rows:
    """One row per clip: its ``mean``, ``std`` and ``max`` rows side by side."""
    mean = data.rows("mean", folds)
    parts = [mean.features]
    for level in ("std", "max"):
        other = data.rows(level, folds)
        where = {c: i for i, c in enumerate(other.clip_ids)}
        lacking = [c for c in mean.clip_ids if c not in where]
        if lacking:
            raise ValueError(
                f"{data.name}: {len(lacking)} clip(s) (e.g. {lacking[0]!r}) have no {level!r} "
                f"row; --features clip_stats needs the mean, std and max rows of every clip"
            )
        parts.append(other.features[[where[c] for c in mean.clip_ids]])
    mean.features = np.concatenate(parts, axis=1)
    mean.feature_names = [f"{s}_{n}" for s in ("mean", "std", "max") for n in mean.feature_names]
    return mean


def _split_rows(data: EmbeddingFile, features: str, folds: Sequence[int]) -> Rows:
    if features == "window":
        return data.rows("window", folds)
    if features == "clip":
        return data.rows("mean", folds)
    return _clip_stats(data, folds)


def _labelled_rows(
    rows: Rows, split: str, folds: Sequence[int], data: EmbeddingFile, features: str
) -> Rows:
    """The labelled rows of a split that needs labels; a clear error when it has none."""
    labelled = rows.targets >= 0
    if not labelled.any():
        what = (
            f"no {SOURCE_LEVELS[features]} rows"
            if not len(rows.targets)
            else "no labelled rows (target -1)"
        )
        raise ValueError(
            f"{data.name}: the {split} folds {_span(folds)} have {what}; boost learns from "
            f"labelled rows: embed a labelled manifest, or pick other --{split}_folds"
        )
    if not labelled.all():
        log.warning(
            "%s: %d of %d %s rows are unlabelled and left out",
            data.name,
            int((~labelled).sum()),
            len(labelled),
            split,
        )
    return rows.take(labelled)


def _class_weights(targets: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class weights ``n / (C * n_c)`` of the classes present (inverse frequency)."""
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(targets) / (present.sum() * counts[present])
    return weights


@contextlib.contextmanager
def _torch_threads(num_threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------- models
def fit_lightgbm(
    train: Rows,
    val: Rows | None,
    num_classes: int,
    options: BoostOptions,
) -> tuple[Any, list[float]]:
    """A multiclass LightGBM booster, early-stopped on ``val``'s log-loss when given.

    Returns:
        ``(booster, history)``: ``booster.best_iteration`` is the round kept; ``history`` the
        validation log-loss of every round (empty without ``val``).
    """
    lgb = require("lightgbm", "boost", "audio-cls boost")
    params = {
        "objective": "multiclass",
        "num_class": num_classes,
        "metric": "multi_logloss",
        "num_leaves": options.num_leaves,
        "learning_rate": options.learning_rate,
        "feature_fraction": options.feature_fraction,
        "bagging_fraction": options.bagging_fraction,
        "bagging_freq": options.bagging_freq if options.bagging_fraction < 1 else 0,
        "min_data_in_leaf": options.min_data_in_leaf,
        "lambda_l2": options.lambda_l2,
        "seed": options.seed,
        "deterministic": True,
        # deterministic needs a fixed histogram layout; column-wise also skips the features a
        # tree does not sample (about 2x faster than row-wise on 1024-d embeddings)
        "force_col_wise": True,
        "num_threads": options.num_threads,
        "verbosity": -1,
    }
    weight = (
        _class_weights(train.targets, num_classes)[train.targets]
        if options.class_balanced
        else None
    )
    names = train.feature_names
    dtrain = lgb.Dataset(train.features, train.targets, weight=weight, feature_name=names)
    callbacks, valid_sets, evals = [], [], {}
    if val is not None:
        dval = lgb.Dataset(val.features, val.targets, reference=dtrain, feature_name=names)
        valid_sets = [dval]
        callbacks = [
            lgb.early_stopping(
                options.early_stopping_rounds, first_metric_only=True, verbose=False
            ),
            lgb.record_evaluation(evals),
        ]
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=options.n_estimators,
        valid_sets=valid_sets,
        valid_names=["val"] * len(valid_sets),
        callbacks=callbacks,
    )
    if val is None or booster.best_iteration <= 0:
        booster.best_iteration = booster.current_iteration()
    history = list(evals.get("val", {}).get("multi_logloss", []))
    return booster, history


@dataclass
class MLPClassifier:
    """A one-hidden-layer MLP on standardised features.

    Attributes:
        net: ``Linear -> ReLU -> Dropout -> Linear``.
        mean: ``(D,)`` feature means of the training rows.
        std: ``(D,)`` their standard deviations.
        best_epoch: The epoch kept (1-based).
    """

    net: torch.nn.Sequential
    mean: torch.Tensor
    std: torch.Tensor
    best_epoch: int

    @torch.no_grad()
    def predict_proba(self, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """``(N, C)`` class probabilities of ``(N, D)`` features."""
        self.net.eval()
        x = (torch.from_numpy(features) - self.mean) / self.std
        return torch.cat(
            [self.net(x[i : i + batch_size]).softmax(-1) for i in range(0, len(x), batch_size)]
        ).numpy()


def fit_mlp(
    train: Rows, val: Rows | None, num_classes: int, options: BoostOptions
) -> MLPClassifier:
    """Train the ensemble's MLP (AdamW, batches of 256), early-stopped on ``val``'s loss.

    Seeded by ``options.seed`` without touching the caller's random state.
    """
    x = torch.from_numpy(train.features)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.from_numpy(train.targets)
    weight = (
        torch.from_numpy(_class_weights(train.targets, num_classes)).float()
        if options.class_balanced
        else None
    )
    if val is not None:
        xv = (torch.from_numpy(val.features) - mean) / std
        yv = torch.from_numpy(val.targets)
    with torch.random.fork_rng(devices=[]), _torch_threads(options.num_threads):
        torch.manual_seed(options.seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(x.shape[1], options.mlp_hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(options.mlp_hidden, num_classes),
        )
        opt = torch.optim.AdamW(net.parameters(), lr=options.mlp_lr, weight_decay=1e-4)
        best, best_loss, best_epoch, stale = None, math.inf, 0, 0
        for epoch in range(1, options.mlp_epochs + 1):
            net.train()
            for batch in torch.randperm(len(x)).split(256):
                loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if val is None:
                continue
            net.eval()
            with torch.no_grad():
                val_loss = torch.nn.functional.cross_entropy(net(xv), yv).item()
            if val_loss < best_loss:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                stale += 1
                if stale >= options.mlp_patience:
                    break
    if best is not None:
        net.load_state_dict(best)
    else:
        best_epoch = options.mlp_epochs
    return MLPClassifier(net.eval(), mean, std, best_epoch)


# ---------------------------------------------------------------------- evaluation
def _clip_results(rows: Rows, probs: np.ndarray, method: str, sample_rate: int) -> ClipResults:
    """Clips in order of first appearance, with their aggregated window probabilities."""
    order: dict[str, int] = {}
    clip_index = np.array([order.setdefault(c, len(order)) for c in rows.clip_ids], np.int64)
    first = np.unique(clip_index, return_index=True)[1]  # each clip's first row
    segment_probs = torch.from_numpy(probs).float()
    index = torch.from_numpy(clip_index)
    return ClipResults(
        clip_ids=list(order),
        paths=[rows.paths[i] for i in first],
        probs=aggregate_clips(segment_probs, index, len(order), method),  # type: ignore[arg-type]
        targets=torch.from_numpy(rows.targets[first]),
        segment_probs=segment_probs,
        segment_clip_index=index,
        segment_starts=torch.from_numpy(np.round(rows.starts * sample_rate).astype(np.int64)),
    )


def _metrics(
    stage: str, rows: Rows, results: ClipResults, num_classes: int, windows: bool
) -> dict[str, float]:
    """The neural runs' metrics: ``{stage}/acc``, ``/macro_f1``, ``/precision``, ``/recall``,
    ``/loss`` of windows (when ``windows``) and ``{stage}/clip_acc``, ``/clip_macro_f1``."""
    from torchmetrics.functional.classification import (
        multiclass_accuracy,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    metrics: dict[str, float] = {}
    kw = {"num_classes": num_classes, "validate_args": False}
    labelled = torch.from_numpy(rows.targets >= 0)
    if windows and labelled.any():
        p, t = results.segment_probs[labelled], torch.from_numpy(rows.targets)[labelled]
        metrics.update(
            {
                f"{stage}/acc": multiclass_accuracy(p, t, average="micro", **kw).item(),
                f"{stage}/loss": torch.nn.functional.nll_loss(p.clamp_min(1e-8).log(), t).item(),
                f"{stage}/macro_f1": multiclass_f1_score(p, t, average="macro", **kw).item(),
                f"{stage}/precision": multiclass_precision(p, t, average="macro", **kw).item(),
                f"{stage}/recall": multiclass_recall(p, t, average="macro", **kw).item(),
            }
        )
    clips = results.covered & (results.targets >= 0)
    if clips.any():
        p, t = results.probs[clips], results.targets[clips]
        metrics[f"{stage}/clip_acc"] = multiclass_accuracy(p, t, average="micro", **kw).item()
        metrics[f"{stage}/clip_macro_f1"] = multiclass_f1_score(p, t, average="macro", **kw).item()
        if not windows:
            metrics[f"{stage}/clip_loss"] = torch.nn.functional.nll_loss(
                p.clamp_min(1e-8).log(), t
            ).item()
    return dict(sorted(metrics.items()))


def _members_metrics(
    stage: str,
    rows: Rows,
    members: dict[str, np.ndarray],
    options: BoostOptions,
    num_classes: int,
    sample_rate: int,
) -> tuple[dict[str, float], ClipResults]:
    """Metrics of the reported probabilities (the ensemble's, when there is one) under
    ``{stage}/``, and of each member under ``{stage}/{member}/``."""
    windows = options.features == "window"
    method = options.aggregation if windows else "mean"
    if options.ensemble:
        w = options.mlp_weight
        probs = (1 - w) * members["lightgbm"] + w * members["mlp"]
    else:
        probs = members["lightgbm"]
    results = _clip_results(rows, probs, method, sample_rate)
    metrics = _metrics(stage, rows, results, num_classes, windows)
    if options.ensemble:
        for member, member_probs in members.items():
            member_results = _clip_results(rows, member_probs, method, sample_rate)
            for key, value in _metrics(stage, rows, member_results, num_classes, windows).items():
                metrics[key.replace(f"{stage}/", f"{stage}/{member}/", 1)] = value
    results.metrics = {k: v for k, v in metrics.items() if k.count("/") == 1}
    return metrics, results


def _write_feature_importance(path: Path, booster: Any) -> None:
    names = booster.feature_name()
    gain = booster.feature_importance("gain", iteration=booster.best_iteration)
    split = booster.feature_importance("split", iteration=booster.best_iteration)
    order = np.argsort(-gain, kind="stable")
    lines = ["feature,gain,split"] + [f"{names[i]},{gain[i]:.6g},{int(split[i])}" for i in order]
    path.write_text("\n".join(lines) + "\n")


def run_boost(
    source: Any,
    out_dir: str | Path,
    train_folds: Sequence[int] | None = None,
    val_folds: Sequence[int] | None = None,
    test_folds: Sequence[int] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Fit LightGBM (and the ensemble's MLP) on embeddings, test it and write the reports.

    Args:
        source: An embeddings Parquet file of ``audio-cls embed``, a ``pyarrow.Table`` of the
            same layout, or an :class:`EmbeddingFile`.
        out_dir: Folder of the reports and models (made when absent; files are replaced).
        train_folds: Folds to train on.
        val_folds: Folds for early stopping (empty: none).
        test_folds: Folds to test on.
        **options: The fields of :class:`BoostOptions`.

    Returns:
        The test and validation metrics (``test/clip_acc``, ``val/clip_acc``, ...) and
        ``lightgbm/best_iteration``, ``lightgbm/fit_sec`` (with ``ensemble`` ``mlp/best_epoch``,
        ``mlp/fit_sec``).
    """
    try:
        opts = BoostOptions(**options)
    except TypeError as err:
        known = ", ".join(f.name for f in fields(BoostOptions))
        raise ValueError(f"unknown boost option ({err}); the options are: {known}") from None
    data = source if isinstance(source, EmbeddingFile) else open_embeddings(source)
    train_f, val_f, test_f = default_folds(
        data.folds, train_folds, val_folds, test_folds, data.name
    )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {out}: cannot make this folder ({err.strerror})") from None
    num_classes = len(data.class_names)
    sample_rate = int(data.metadata.get("sample_rate") or 0)

    kind = opts.features
    train = _labelled_rows(_split_rows(data, kind, train_f), "train", train_f, data, kind)
    val = (
        _labelled_rows(_split_rows(data, kind, val_f), "val", val_f, data, kind) if val_f else None
    )
    test = _split_rows(data, kind, test_f)
    if not len(test.targets):
        raise ValueError(
            f"{data.name}: the test folds {_span(test_f)} have no {SOURCE_LEVELS[kind]} rows"
        )
    log.info(
        "boost: %d train, %d val, %d test rows of %d features, %d classes",
        len(train.targets),
        0 if val is None else len(val.targets),
        len(test.targets),
        train.features.shape[1],
        num_classes,
    )

    start = time.perf_counter()
    booster, history = fit_lightgbm(train, val, num_classes, opts)
    fit = {
        "lightgbm/best_iteration": int(booster.best_iteration),
        "lightgbm/fit_sec": round(time.perf_counter() - start, 3),
    }
    best = booster.best_iteration
    test_members = {"lightgbm": booster.predict(test.features, num_iteration=best)}
    val_members = {"lightgbm": booster.predict(val.features, num_iteration=best)} if val else {}
    mlp = None
    if opts.ensemble:
        start = time.perf_counter()
        mlp = fit_mlp(train, val, num_classes, opts)
        fit["mlp/best_epoch"] = mlp.best_epoch
        fit["mlp/fit_sec"] = round(time.perf_counter() - start, 3)
        test_members["mlp"] = mlp.predict_proba(test.features)
        if val is not None:
            val_members["mlp"] = mlp.predict_proba(val.features)

    test_metrics, results = _members_metrics(
        "test", test, test_members, opts, num_classes, sample_rate
    )
    val_metrics = (
        _members_metrics("val", val, val_members, opts, num_classes, sample_rate)[0] if val else {}
    )

    # reports, as a neural run writes them
    names = data.class_names
    write_test_reports(out, test_metrics, results, names, top_k=opts.top_k)
    write_metrics(
        out / "metrics_val.json",
        {
            "monitor": "val/loss" if opts.features == "window" else "val/clip_loss",
            "best": {"iteration": best, **val_metrics},
            "history": [{"iteration": i + 1, "val/logloss": v} for i, v in enumerate(history)],
        },
    )
    _write_feature_importance(out / "feature_importance.csv", booster)
    booster.save_model(str(out / "lightgbm.txt"), num_iteration=best)
    if mlp is not None:
        torch.save(
            {"state_dict": mlp.net.state_dict(), "mean": mlp.mean, "std": mlp.std},
            out / "mlp.pt",
        )
    summary = {
        "class_names": names,
        "num_features": len(train.feature_names),
        "folds": {"train": train_f, "val": val_f, "test": test_f},
        "options": asdict(opts),
        "rows": {
            "train": len(train.targets),
            "val": 0 if val is None else len(val.targets),
            "test": len(test.targets),
        },
        **fit,
        "source": data.name,
        "embeddings": data.metadata,
    }
    (out / "boost.json").write_text(json.dumps(summary, indent=2, default=str))
    return {**test_metrics, **val_metrics, **fit}
