"""``audio-cls boost``: LightGBM (optionally with a small MLP) on the embeddings of ``embed``.

The work is :func:`audio_cls.boost.run_boost`; this verb gives it a command line and a YAML
(``--config``), prints where the reports went and the headline numbers. Its options are
:class:`audio_cls.boost.BoostOptions`, listed again here because the signature is the schema
(``tests/test_boost.py`` holds the two equal).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from audio_cls.boost import BoostOptions, Features, run_boost
from audio_cls.inference import Aggregation

__all__ = ["boost"]


def boost(
    embeddings: str,
    out: str,
    train_folds: list[int] | None = None,
    val_folds: list[int] | None = None,
    test_folds: list[int] | None = None,
    features: Features = "window",
    aggregation: Aggregation = "mean",
    num_leaves: int = 31,
    learning_rate: float = 0.1,
    n_estimators: int = 1000,
    early_stopping_rounds: int = 50,
    feature_fraction: float = 0.5,
    bagging_fraction: float = 0.8,
    bagging_freq: int = 1,
    min_data_in_leaf: int = 20,
    lambda_l2: float = 1.0,
    class_balanced: bool = False,
    seed: int = 0,
    num_threads: int = 0,
    ensemble: bool = False,
    mlp_weight: float = 0.5,
    mlp_hidden: int = 256,
    mlp_epochs: int = 100,
    mlp_patience: int = 10,
    mlp_lr: float = 1e-3,
    top_k: int = 3,
) -> None:
    """Train LightGBM on the embeddings of `audio-cls embed` (early stopping on the validation
    folds), test it on the test folds, and write the neural runs' reports (metrics_test.json,
    predictions.csv, classification_report.csv, confusion_matrix.png) plus
    feature_importance.csv, lightgbm.txt and boost.json.

    Args:
        embeddings: Parquet file written by `audio-cls embed`.
        out: Folder for the reports and the model (made when absent; files are replaced).
        train_folds: Folds to train on. Give the three fold lists, or none of them for a file
            whose folds are exactly 1-10 (UrbanSound8K: 1-8/9/10) or 1-5 (ESC-50: 1-3/4/5).
        val_folds: Folds for early stopping ([]: none, n_estimators rounds are trained).
        test_folds: Folds to test on.
        features: window: train on window rows, clip scores aggregate window probabilities;
            clip: on each clip's mean row; clip_stats: on its mean, std and max rows side by
            side (3 x D features). The clip kinds have no window metrics.
        aggregation: Window probabilities -> clip probabilities: mean, logit_mean, max or vote
            (features window only).
        num_leaves: Largest number of leaves per tree.
        learning_rate: Shrinkage of each tree.
        n_estimators: Most boosting rounds; early stopping usually ends sooner.
        early_stopping_rounds: Rounds without a lower validation log-loss before stopping.
        feature_fraction: Share of features each tree may use.
        bagging_fraction: Share of training rows each tree sees (1: all).
        bagging_freq: Redraw the rows every this many rounds (0: no bagging).
        min_data_in_leaf: Fewest training rows per leaf.
        lambda_l2: L2 regularisation of leaf values.
        class_balanced: Weight training rows by the inverse frequency of their class.
        seed: Seed of LightGBM and of the MLP; with the same num_threads, the same seed gives
            the same predictions.
        num_threads: CPU threads of LightGBM and the MLP (0: their defaults, every core). On
            a machine busy with other jobs, set OMP_WAIT_POLICY=PASSIVE in the environment:
            LightGBM's OpenMP threads otherwise spin while they wait, many times slower.
        ensemble: Also train a small MLP on standardised features and average its window
            probabilities with LightGBM's; the members' metrics are reported too
            (test/lightgbm/..., test/mlp/...).
        mlp_weight: The MLP's share of the ensemble's probabilities.
        mlp_hidden: Width of the MLP's hidden layer.
        mlp_epochs: Most epochs of the MLP.
        mlp_patience: Epochs without a lower validation loss before the MLP stops.
        mlp_lr: The MLP's learning rate (AdamW).
        top_k: Classes listed per clip in predictions.csv.
    """
    given = locals()
    options = {f.name: given[f.name] for f in fields(BoostOptions)}
    metrics = run_boost(embeddings, out, train_folds, val_folds, test_folds, **options)
    parts = [
        f"{label} {metrics[key]:.3f}"
        for key, label in (
            ("test/acc", "window acc"),
            ("test/clip_acc", "clip acc"),
            ("test/clip_macro_f1", "clip macro-F1"),
        )
        if metrics.get(key) is not None
    ]
    fit = (
        f"LightGBM: {metrics['lightgbm/best_iteration']} rounds kept, "
        f"{metrics['lightgbm/fit_sec']:.1f} s"
    )
    if ensemble:
        fit += f"; MLP: epoch {metrics['mlp/best_epoch']} kept, {metrics['mlp/fit_sec']:.1f} s"
    print(f"{fit}\ntest: {', '.join(parts) or 'no labelled clips'}\nreports in {Path(out)}")
