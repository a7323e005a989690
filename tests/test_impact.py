"""The impact-noise task: class groups, the validation-chosen threshold and its test report, the
precision-recall curve, events in long recordings, and the impact config end to end."""

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from audio_cls.callbacks import ClipAggregation, RunReport
from audio_cls.callbacks.run_report import recorded_threshold
from audio_cls.cli import main
from audio_cls.commands import UsageError
from audio_cls.data.sources import (
    ESC50,
    ClassFolders,
    ClassGroups,
    CSVManifest,
    ManifestError,
    Synthetic,
)
from audio_cls.inference import ClipResults
from audio_cls.reports import (
    MAX_F1_RULE,
    average_precision,
    choose_threshold,
    find_events,
    positive_metrics,
)
from tests.conftest import TINY_SYNTHETIC, save_tiny_checkpoint, write_csv

CONFIG = Path(__file__).parents[1] / "configs" / "impact_synthetic.yaml"
FAST = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.logger=false",
    "--data.num_workers=0",
    "--data.batch_size=8",
]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# class groups


@pytest.fixture
def soft_manifest(tmp_path, write_tone) -> Path:
    for name in ("a", "b", "c", "d"):
        write_tone(tmp_path / f"{name}.wav", seconds=0.1)
    write_csv(
        tmp_path / "manifest.csv",
        ["path", "label", "fold", "prob_impact", "prob_knock", "prob_tone", "prob_hum"],
        [
            ["a.wav", "", 1, 0.5, 0.2, 0.3, 0.0],
            ["b.wav", "tone", 2, "", "", "", ""],
            ["c.wav", "", 3, 0.1, 0.1, 0.2, 0.6],
            ["d.wav", "knock", 3, 0.3, 0.3, 0.4, 0.0],
        ],
    )
    return tmp_path


def test_groups_put_the_named_classes_first_and_sum_soft_targets(soft_manifest):
    source = ClassGroups(CSVManifest(num_folds=3), {"impact": ["impact", "knock"]})
    m = source.manifest(soft_manifest)
    assert m.class_names == ["impact", "other"]
    by_id = {c.clip_id: c for c in m.clips}
    assert by_id["a.wav"].soft == pytest.approx((0.7, 0.3))
    assert by_id["a.wav"].label == 0  # its argmax, impact, is in the group
    assert by_id["b.wav"].soft is None and by_id["b.wav"].label == 1  # a hard label
    assert by_id["c.wav"].soft == pytest.approx((0.2, 0.8)) and by_id["c.wav"].label == 1
    # the written label is grouped, even where the grouped soft target leans the other way
    assert by_id["d.wav"].soft == pytest.approx((0.6, 0.4)) and by_id["d.wav"].label == 0
    assert [c.fold for c in m.clips] == [1, 2, 3, 3]
    assert source.default_folds == CSVManifest(num_folds=3).default_folds
    assert source.num_folds == 3  # the data module names fold settings in its messages


def test_groups_refuse_unknown_classes_with_the_known_ones(soft_manifest):
    source = ClassGroups(CSVManifest(num_folds=3), {"impact": ["impact", "door_knock"]})
    with pytest.raises(ManifestError) as err:
        source.manifest(soft_manifest)
    text = str(err.value)
    assert "\n" not in text and "'door_knock'" in text
    assert "impact, knock, tone, hum" in text


def test_groups_several_groups_and_no_rest(esc50_root):
    source = ClassGroups(
        ESC50(download=False),
        {"water": ["rain", "sea_waves"], "animal": ["dog", "rooster"]},
        rest=None,
    )
    with pytest.raises(ManifestError, match="crackling_fire are in no group"):
        source.manifest(esc50_root)
    source.groups["fire"] = ["crackling_fire"]
    m = source.manifest(esc50_root)
    assert m.class_names == ["water", "animal", "fire"]
    inner = ESC50(download=False).manifest(esc50_root)
    names = [m.class_names[c.label] for c in m.clips]
    expected = {"rain": "water", "sea_waves": "water", "dog": "animal", "rooster": "animal"}
    assert names == [expected.get(inner.class_names[c.label], "fire") for c in inner.clips]


def test_groups_that_take_every_class_have_no_rest_group(tmp_path):
    source = ClassGroups(Synthetic(**TINY_SYNTHETIC), {"thump": ["impact", "footsteps", "knock"]})
    source.prepare(tmp_path)
    m = source.manifest(tmp_path)
    assert m.class_names == ["thump"] and {c.label for c in m.clips} == {0}


def test_groups_of_class_folders_keep_the_folder_settings(tmp_path, write_tone):
    for name in ("knock", "thud", "bird"):
        for i in range(3):
            write_tone(tmp_path / name / f"rec{i}_{name}.wav", seconds=0.1)
    source = ClassGroups(
        ClassFolders(num_folds=3, group_pattern=r"^(rec\d)"), {"hit": ["knock", "thud"]}
    )
    m = source.manifest(tmp_path)
    assert m.class_names == ["hit", "other"]
    assert sorted((c.path.parent.name, m.class_names[c.label]) for c in m.clips)[::3] == [
        ("bird", "other"),
        ("knock", "hit"),
        ("thud", "hit"),
    ]
    assert source.group_pattern == r"^(rec\d)" and source._pattern is not None


@pytest.mark.parametrize(
    ("groups", "rest", "match"),
    [
        ({}, "other", "groups is empty"),
        ({"x": []}, "other", "has no classes"),
        ({"x": ["a"], "y": ["a"]}, "other", "in two groups"),
        ({"other": ["a"]}, "other", "also the name of a group"),
    ],
)
def test_groups_refuse_bad_settings(groups, rest, match):
    with pytest.raises(ValueError, match=match):
        ClassGroups(Synthetic(), groups, rest)


# ---------------------------------------------------------------------------------------------
# the decision threshold and the positive class's precision, recall and F1

# validation: the max-F1 cut is at 0.6 (F1 0.8), so the threshold is midway to 0.2: 0.4
VAL = ([0.9, 0.6, 0.7, 0.2], [True, True, False, False])
# test: at 0.4 one hit, one false alarm, one miss (F1 0.5); tuned on test it would cut at
# 0.35 (F1 0.8): the test fold must never choose it
TEST = ([0.95, 0.35, 0.5, 0.1, 0.3], [True, True, False, False, False])


def test_threshold_is_the_max_f1_cut_on_the_given_clips():
    t = choose_threshold(*VAL, positive="impact")
    assert t.threshold == pytest.approx(0.4) and t.val_f1 == pytest.approx(0.8)
    assert t.rule == MAX_F1_RULE and t.positive == "impact"
    assert choose_threshold(*TEST, positive="impact").threshold == pytest.approx(0.325)
    # ties go to the higher threshold; the lowest score cuts at itself
    assert choose_threshold([0.8, 0.6], [True, False], "x").threshold == pytest.approx(0.7)
    assert choose_threshold([0.8, 0.6], [True, True], "x").threshold == pytest.approx(0.6)
    # nothing to choose on: 0.5, said so
    for scores, positives in (([], []), ([0.3, 0.9], [False, False])):
        t = choose_threshold(scores, positives, "x")
        assert t.threshold == 0.5 and t.val_f1 is None and "no validation" in t.rule


def test_positive_metrics_by_hand():
    at = positive_metrics(*TEST, threshold=0.4)
    assert (at["tp"], at["fp"], at["fn"]) == (1, 1, 1)
    assert at["precision"] == pytest.approx(1 / 2) and at["recall"] == pytest.approx(1 / 2)
    assert at["f1"] == pytest.approx(2 * 0.5 * 0.5 / (0.5 + 0.5))
    at = positive_metrics(*TEST, threshold=0.35)  # a score equal to the threshold is called
    assert at["precision"] == pytest.approx(2 / 3) and at["recall"] == 1.0
    at = positive_metrics(*TEST, threshold=0.99)  # nothing called: 0, not a division error
    assert at["precision"] == at["recall"] == at["f1"] == 0.0
    # recall steps 0.5 (precision 1), 0 (0.5), 0.5 (2/3), 0, 0
    assert average_precision(*TEST) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert average_precision([0.1, 0.2], [False, False]) is None


def _results(scores, positives) -> ClipResults:
    """Two-class clip results ([impact, other]) whose impact probabilities are ``scores``."""
    p = torch.tensor(scores, dtype=torch.float32)
    n = len(scores)
    return ClipResults(
        clip_ids=[f"c{i}" for i in range(n)],
        paths=[f"c{i}.wav" for i in range(n)],
        probs=torch.stack([p, 1 - p], dim=1),
        targets=torch.tensor([0 if y else 1 for y in positives]),
        segment_probs=torch.stack([p, 1 - p], dim=1),
        segment_clip_index=torch.arange(n),
        segment_starts=torch.zeros(n, dtype=torch.long),
    )


def test_the_test_fold_is_scored_at_the_threshold_chosen_on_validation(tmp_path):
    aggregation = ClipAggregation()
    report = RunReport(positive_class="impact")
    trainer = SimpleNamespace(
        sanity_checking=False,
        current_epoch=0,
        callback_metrics={"val/clip_acc": torch.tensor(0.5), "test/clip_acc": torch.tensor(0.6)},
        state=SimpleNamespace(fn="validate"),
        callbacks=[aggregation, report],
        fast_dev_run=False,
        log_dir=str(tmp_path),
        default_root_dir=str(tmp_path),
        is_global_zero=True,
        ckpt_path=None,
        checkpoint_callback=None,
        loggers=[],
    )
    module = SimpleNamespace(class_names=["impact", "other"])
    aggregation.results["val"] = _results(*VAL)
    report.on_validation_end(trainer, module)
    assert report.state_dict()["threshold"]["threshold"] == pytest.approx(0.4)

    aggregation.results["test"] = _results(*TEST)
    report.on_test_start(trainer, module)
    report.on_test_end(trainer, module)
    metrics = json.loads((tmp_path / "metrics_test.json").read_text())
    assert metrics["test/clip_pos_threshold"] == pytest.approx(0.4)
    assert metrics["test/clip_pos_precision"] == pytest.approx(0.5)
    assert metrics["test/clip_pos_recall"] == pytest.approx(0.5)
    assert metrics["test/clip_pos_f1"] == pytest.approx(0.5)  # not the 0.8 of tuning on test
    assert metrics["test/clip_pos_ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert metrics["decision"]["rule"] == MAX_F1_RULE and metrics["decision"]["fp"] == 1
    assert metrics["test/clip_acc"] == pytest.approx(0.6)  # the usual metrics stay
    png = tmp_path / "pr_curve.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "predictions.csv").is_file()

    # cv takes the positive class's figures of each fold into its summary and table
    from audio_cls.commands.cv import _fold_stats, _table, summarize

    cli = SimpleNamespace(trainer=SimpleNamespace(callbacks=[report], log_dir=None))
    row = {"fold": 1, **_fold_stats(cli, None)}
    assert row == {
        "fold": 1,
        "test/clip_pos_precision": pytest.approx(0.5),
        "test/clip_pos_recall": pytest.approx(0.5),
        "test/clip_pos_f1": pytest.approx(0.5),
    }
    summary = summarize([row, {**row, "fold": 2, "test/clip_pos_f1": 1.0}])
    assert summary["test/clip_pos_f1"]["mean"] == pytest.approx(0.75)
    table = _table([row], summary)
    assert "pos precision" in table.splitlines()[0] and "0.5000" in table.splitlines()[1]

    # a model tested without any validation threshold says it used 0.5
    fresh = RunReport(positive_class="impact")
    trainer.callbacks = [aggregation, fresh]
    fresh.on_test_start(trainer, module)
    fresh.on_test_end(trainer, module)
    metrics = json.loads((tmp_path / "metrics_test.json").read_text())
    assert metrics["test/clip_pos_threshold"] == 0.5
    assert "no validation" in metrics["decision"]["rule"]


def test_an_unknown_positive_class_is_refused_with_the_known_ones():
    report = RunReport(positive_class="thump")
    trainer = SimpleNamespace(fast_dev_run=True, datamodule=None)
    with pytest.raises(ValueError, match="'thump' is not one of the data's classes: impact, other"):
        report.setup(trainer, SimpleNamespace(class_names=["impact", "other"]), "fit")


# ---------------------------------------------------------------------------------------------
# events


def test_events_merge_consecutive_windows_and_split_at_gaps():
    starts = [0.0, 1.0, 2.0, 3.0, 4.0]  # hop = window: windows touch, never overlap
    assert find_events(starts, [0.6, 0.4, 0.7, 0.9, 0.2], 1.0, 0.5) == [
        (0.0, 1.0, 0.6),
        (2.0, 4.0, 0.9),
    ]
    # the edges: above from the first window to the last is one event
    assert find_events(starts, [0.6] * 5, 1.0, 0.5) == [(0.0, 5.0, 0.6)]
    # a probability equal to the threshold counts
    assert find_events(starts, [0.1, 0.5, 0.1, 0.1, 0.5], 1.0, 0.5) == [
        (1.0, 2.0, 0.5),
        (4.0, 5.0, 0.5),
    ]
    assert find_events(starts, [0.1] * 5, 1.0, 0.5) == []
    assert find_events([], [], 1.0, 0.5) == []


def test_events_overlapping_in_time_are_one():
    # hop = a quarter window: windows 0 and 2 overlap even with window 1 below the threshold
    starts = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    assert find_events(starts, [0.9, 0.1, 0.8, 0.1, 0.1, 0.1], 1.0, 0.5) == [(0.0, 1.5, 0.9)]
    # ... but windows that no longer overlap are two events
    assert find_events(starts, [0.9, 0.1, 0.1, 0.1, 0.1, 0.7], 1.0, 0.5) == [
        (0.0, 1.0, 0.9),
        (1.25, 2.25, 0.7),
    ]


def _with_threshold(ckpt: Path, threshold: float, positive: str = "impact") -> Path:
    """The checkpoint as a ``report.positive_class`` run saves it, with its chosen threshold."""
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint.setdefault("callbacks", {})["RunReport"] = {
        "val_history": [],
        "threshold": {"positive": positive, "threshold": threshold, "rule": "r", "val_f1": 0.9},
    }
    torch.save(checkpoint, ckpt)
    return ckpt


def test_classify_events_end_to_end(tmp_path, write_tone, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = save_tiny_checkpoint(tmp_path / "m.ckpt", ["impact", "other"], 0.5, 0.25)
    long = write_tone(tmp_path / "long.wav", seconds=3.0)
    short = write_tone(tmp_path / "short.wav", seconds=1.0, freq=900)
    common = ["classify", str(long), str(short), "--ckpt", str(ckpt), "--timeline", "t.csv"]

    main([*common, "--events", "impact, other", "--event_threshold", "0"])
    rows = _rows(tmp_path / "events.csv")
    # threshold 0: every window counts, one event per clip and class spanning all its windows
    assert [(r["clip_id"], r["class"]) for r in rows] == [
        ("long", "impact"),
        ("long", "other"),
        ("short", "impact"),
        ("short", "other"),
    ]
    timeline = _rows(tmp_path / "t.csv")
    last = {r["clip_id"]: r["end_sec"] for r in timeline}
    for r in rows:
        assert float(r["start_sec"]) == 0.0 and r["end_sec"] == last[r["clip_id"]]
        assert float(r["threshold"]) == 0.0
    assert "events:" in capsys.readouterr().out

    # the default threshold: the one the checkpoint's run chose on validation, for its class
    _with_threshold(ckpt, 0.0)
    assert recorded_threshold(ckpt).threshold == 0.0
    main([*common, "--events", "impact,other", "--events_out", "e2.csv"])
    thresholds = {r["class"]: float(r["threshold"]) for r in _rows(tmp_path / "e2.csv")}
    assert thresholds["impact"] == 0.0 and thresholds.get("other", 0.5) == 0.5
    out = capsys.readouterr().out
    assert "impact >= 0.000, chosen on validation" in out and "other >= 0.5, the default" in out

    # refused before any clip is predicted: no predictions file is written
    with pytest.raises(UsageError, match="--events thump: not a class of this model; its classes"):
        main([*common, "--events", "thump", "--out", "never.csv"])
    assert not (tmp_path / "never.csv").exists()
    with pytest.raises(UsageError, match="--events ',' names no class"):
        main([*common, "--events", ","])
    with pytest.raises(UsageError, match=r"--event_threshold must be in 0\.\.1"):
        main([*common, "--events", "impact", "--event_threshold", "1.5"])


def test_runs_on_groups_record_the_groups_and_the_wrapped_source(tmp_path):
    """What ``compare`` checks of a grouped dataset: its groups and the wrapped source's options,
    so that two impact tasks with other groups or other data are told apart by name."""
    from audio_cls.callbacks.run_stats import describe_data
    from audio_cls.commands.compare import _dataset_difference

    def described(groups, clips_per_class=2):
        source = ClassGroups(
            Synthetic(num_classes=4, clips_per_class=clips_per_class, clip_sec=0.5), groups
        )
        root = tmp_path / str(clips_per_class)
        source.prepare(root)
        manifest = source.manifest(root)
        return describe_data(SimpleNamespace(source=source, manifest=manifest, root=root))

    impact = described({"impact": ["impact", "knock"]})
    assert impact["name"] == "synthetic-impact"
    assert impact["options"]["groups"] == {"impact": ["impact", "knock"]}
    assert impact["options"]["source"] == "Synthetic"
    assert impact["options"]["source.clips_per_class"] == 2
    why = _dataset_difference(impact, described({"impact": ["impact"]}))
    assert "(groups={'impact': ['impact', 'knock']}) vs ClassGroups(groups={'impact': [" in why
    why = _dataset_difference(impact, described({"impact": ["impact", "knock"]}, 3))
    assert "source.clips_per_class=2) vs ClassGroups(source.clips_per_class=3)" in why


# ---------------------------------------------------------------------------------------------
# the impact config, trained end to end


@pytest.fixture(scope="module")
def impact_root(tmp_path_factory) -> Path:
    """Five synthetic classes: impact, footsteps, knock against tone and sweep."""
    root = tmp_path_factory.mktemp("impact5")
    Synthetic(**{**TINY_SYNTHETIC, "num_classes": 5}).prepare(root)
    return root


def test_impact_config_end_to_end(impact_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny = {**TINY_SYNTHETIC, "num_classes": 5}
    main(
        [
            "fit",
            "--config",
            str(CONFIG),
            f"--data.root={impact_root}",
            *[f"--data.source.init_args.source.init_args.{k}={v}" for k, v in tiny.items()],
            "--model.init_args.channels=[4, 8]",
            "--trainer.max_epochs=2",
            "--data.window_sec=0.5",
            *FAST,
        ]
    )
    run = tmp_path / "runs" / "impact_synthetic"
    for name in ("metrics_val.json", "metrics_test.json", "pr_curve.png", "confusion_matrix.png"):
        assert (run / name).is_file(), name
    val = json.loads((run / "metrics_val.json").read_text())
    test = json.loads((run / "metrics_test.json").read_text())
    best = run / "checkpoints" / "best.ckpt"
    chosen = recorded_threshold(best)
    # the tested (best) checkpoint's threshold: the one of the best validation epoch
    assert chosen is not None and chosen.positive == "impact"
    assert chosen.threshold == pytest.approx(val["best"]["val/clip_pos_threshold"])
    assert test["test/clip_pos_threshold"] == pytest.approx(chosen.threshold)
    assert test["decision"]["threshold"] == pytest.approx(chosen.threshold)
    for key in ("precision", "recall", "f1"):
        assert 0.0 <= test[f"test/clip_pos_{key}"] <= 1.0
    predictions = _rows(run / "predictions.csv")
    assert {r["target"] for r in predictions} == {"impact", "other"}
    # the same figures from predictions.csv, by hand
    scores = np.array([float(r["prob_impact"]) for r in predictions])
    at = positive_metrics(scores, [r["target"] == "impact" for r in predictions], chosen.threshold)
    assert test["test/clip_pos_f1"] == pytest.approx(at["f1"])

    clip = next((impact_root / "audio").rglob("*.wav"))
    main(["classify", str(clip), "--ckpt", str(best), "--events", "impact"])
    assert f"impact >= {chosen.threshold:.3f}, chosen on validation" in capsys.readouterr().out
    for r in _rows(tmp_path / "events.csv"):
        assert float(r["threshold"]) == pytest.approx(chosen.threshold)
