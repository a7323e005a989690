"""Students from teacher labels: distillation and weighted losses, the consistency term between
two augmented views, extra (teacher-labelled) and unlabelled training clips, early stopping,
and pseudo-labelling rounds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from audio_cls.data import AudioDataModule
from audio_cls.data.sources import ManifestError, Synthetic
from audio_cls.models import create_model
from audio_cls.models.base import consistency_loss, distillation_loss
from tests.conftest import TINY_SYNTHETIC, write_csv

CLASSES = ["impact", "footsteps", "knock"]


def tiny(**options) -> torch.nn.Module:
    """A tiny MelCNN without dropout, in eval mode (BatchNorm fixed): losses are deterministic."""
    torch.manual_seed(0)
    model = create_model(
        "mel_cnn", 3, channels=[4, 8, 8], class_names=CLASSES, head_dropout=0.0, **options
    )
    model.log = lambda *args, **kwargs: None  # no Trainer here
    return model.eval()


def batch(n: int = 4, **extra) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {
        "waveform": 0.1 * torch.randn(n, 8000),
        "target": torch.tensor([0, 1, 2, 0, 1, 2][:n]),
        "clip_index": torch.arange(n),
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# loss arithmetic


def test_kl_at_a_temperature_is_the_hand_computed_value():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8]])
    t = 2.0
    for row in range(2):
        q = [p ** (1 / t) for p in soft[row].tolist()]
        q = [x / sum(q) for x in q]
        z = [x / t for x in logits[row].tolist()]
        log_norm = math.log(sum(math.exp(x) for x in z))
        log_p = [x - log_norm for x in z]
        want = t * t * sum(qi * (math.log(qi) - lp) for qi, lp in zip(q, log_p))
        got = distillation_loss(logits, soft, t)[row].item()
        assert got == pytest.approx(want, rel=1e-5)


def test_kl_at_temperature_one_is_cross_entropy_less_the_targets_entropy():
    logits = torch.randn(5, 4)
    soft = torch.softmax(torch.randn(5, 4), -1)
    entropy = -(soft * soft.log()).sum(-1)
    ce = F.cross_entropy(logits, soft, reduction="none")
    torch.testing.assert_close(distillation_loss(logits, soft, 1.0), ce - entropy)
    # a one-hot target (a hard-labelled clip in a soft batch) and a zero row (unlabelled)
    onehot = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    got = distillation_loss(logits[:2], onehot, 3.0)
    assert got[0] == pytest.approx(9 * F.cross_entropy(logits[:1] / 3, torch.tensor([1])).item())
    assert got[1] == 0 and torch.isfinite(got).all()


def test_model_kl_loss_and_weights_reach_the_training_step():
    model = tiny(soft_loss="kl", distill_temperature=2.0)
    soft = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0]])
    weight = torch.tensor([1.0, 0.5, 0.0, 2.0])
    b = batch(soft=soft, weight=weight)
    loss = model.training_step(b, 0)
    with torch.no_grad():
        logits = model(b["waveform"])
    want = (distillation_loss(logits, soft, 2.0) * weight).mean()
    torch.testing.assert_close(loss, want)


def test_weights_scale_each_clips_cross_entropy_and_unlabelled_clips_are_left_out():
    model = tiny(label_smoothing=0.0)
    weight = torch.tensor([1.0, 0.25, 2.0, 1.0])
    target = torch.tensor([0, 1, -1, 2])  # clip 2 has no label
    b = batch(weight=weight)
    b["target"] = target
    with torch.no_grad():
        logits = model(b["waveform"])
        per_clip = F.cross_entropy(logits, target.clamp_min(0), reduction="none")
        loss = model.training_step(b, 0)
    keep = target >= 0
    torch.testing.assert_close(loss, (per_clip * weight)[keep].sum() / keep.sum())
    # all weights 1: the plain mean of the labelled clips
    b["weight"] = torch.ones(4)
    with torch.no_grad():
        torch.testing.assert_close(model.training_step(b, 0), per_clip[keep].mean())


def test_new_options_off_leave_the_loss_unchanged():
    model = tiny()
    for extra in ({}, {"soft": torch.softmax(torch.randn(4, 3), -1)}):
        b = batch(**extra)
        with torch.no_grad():
            logits = model(b["waveform"])
            loss = model.training_step(b, 0)
        target = extra.get("soft", b["target"])
        assert torch.equal(loss, F.cross_entropy(logits, target, label_smoothing=0.1))
    # and the options travel with the hyper-parameters
    assert model.hparams.soft_loss == "ce" and model.hparams.consistency_weight == 0.0


def test_consistency_term_is_zero_for_identical_views_and_positive_otherwise():
    a = torch.randn(6, 5, requires_grad=True)
    b = torch.randn(6, 5, requires_grad=True)
    for kind in ("kl", "mse"):
        same = consistency_loss(a, a.detach().clone(), kind)
        torch.testing.assert_close(same, torch.zeros(6), atol=1e-6, rtol=0)
        term = consistency_loss(a, b, kind)
        assert (term > 0).all()
        term.sum().backward()
        assert a.grad is None  # the first view is the target: no gradient through it
        assert b.grad.abs().sum() > 0
        b.grad = None


def test_consistency_in_the_training_step(tmp_path):
    model = tiny(consistency_weight=2.0, consistency_loss="mse")
    b = batch()
    with pytest.raises(ValueError, match="second_view"):
        model.training_step(b, 0)
    with torch.no_grad():
        supervised = tiny().training_step(batch(), 0)
        same = model.training_step({**b, "view": b["waveform"].clone()}, 0)
        other_view = b["waveform"] + 0.3 * torch.randn_like(b["waveform"])
        differs = model.training_step({**b, "view": other_view}, 0)
        logits, other = model(b["waveform"]), model(other_view)
    # identical views: the supervised loss alone (up to the order of additions)
    torch.testing.assert_close(same, supervised)
    want = supervised + 2.0 * consistency_loss(logits, other, "mse").mean()
    torch.testing.assert_close(differs, want)
    assert differs > supervised
    # unlabelled clips contribute the consistency term alone
    b["target"] = torch.full((4,), -1)
    with torch.no_grad():
        only = model.training_step({**b, "view": other_view}, 0)
    torch.testing.assert_close(only, 2.0 * consistency_loss(logits, other, "mse").mean())


def test_multi_tap_heads_sum_their_weighted_and_consistency_losses():
    taps = ["pool5", "conv6", "conv7"]
    torch.manual_seed(0)
    model = create_model(
        "soundnet8", 3, width=0.125, taps=taps, head_dropout=0.0, consistency_weight=0.5
    ).eval()
    model.log = lambda *args, **kwargs: None
    wave = 0.1 * torch.randn(3, 22050)
    view = wave + 0.05 * torch.randn_like(wave)
    weight = torch.tensor([1.0, 0.5, 1.0])
    target = torch.tensor([0, 2, 1])
    b = {"waveform": wave, "view": view, "target": target, "weight": weight}
    with torch.no_grad():
        loss = model.training_step(b, 0)
        one, two = model.forward_features(wave), model.forward_features(view)
        want = 0
        for t in taps:
            x, y = model.head.heads[t](one[t]), model.head.heads[t](two[t])
            ce = F.cross_entropy(x, target, label_smoothing=0.1, reduction="none")
            want = want + (ce * weight).mean() + 0.5 * (consistency_loss(x, y) * weight).mean()
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-5)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="distill_temperature"):
        tiny(distill_temperature=0.0)
    with pytest.raises(ValueError, match="consistency_weight"):
        tiny(consistency_weight=-1.0)


# ---------------------------------------------------------------------------------------------
# extra and unlabelled training clips


def _dm(root: Path, **kw) -> AudioDataModule:
    kw = {
        "num_workers": 0,
        "clip_sec": 1.0,
        "batch_size": 16,
        "train_folds": [1],
        "val_folds": [2],
        "test_folds": [3],
        **kw,
    }
    return AudioDataModule(root=str(root), source=Synthetic(**TINY_SYNTHETIC), **kw)


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    """More clips of the same classes (another seed): audio the dataset does not hold."""
    root = tmp_path_factory.mktemp("pool")
    Synthetic(**{**TINY_SYNTHETIC, "clips_per_class": 4, "seed": 7}).prepare(root)
    return root


def _teacher_manifest(path: Path, files: list[Path]) -> Path:
    """A label manifest as `audio-cls label` writes it (soft labels: 0.8 on the folder's class)."""
    rows = []
    for f in files:
        probs = [0.8 if c == f.parent.name else 0.1 for c in CLASSES]
        label = CLASSES[probs.index(0.8)]
        rows.append([str(f), label, 0.8, *probs])
    header = ["path", "label", "confidence", *(f"prob_{c}" for c in CLASSES)]
    return write_csv(path, header, rows)


def _pool_files(pool: Path) -> list[Path]:
    return sorted((pool / "audio").rglob("*.wav"))


def test_extra_clips_join_training_only_with_their_weight(synthetic_root, pool, tmp_path):
    files = _pool_files(pool)
    manifest = _teacher_manifest(tmp_path / "teacher.csv", files)
    dm = _dm(synthetic_root, extra_train=str(manifest), extra_weight=0.25)
    dm.setup("fit")
    dm.setup("test")
    train, val, test = (dm.segments(s).clips for s in ("train", "val", "test"))
    extra = [c for c in train if c.clip_id.startswith("extra:")]
    assert len(extra) == len(files) and len(train) == 9 + len(files)
    assert not any(c.clip_id.startswith("extra:") for c in val + test)
    assert all(sorted(c.soft) == pytest.approx([0.1, 0.1, 0.8]) for c in extra)

    b = next(iter(dm.train_dataloader()))
    is_extra = torch.tensor([train[i].clip_id.startswith("extra:") for i in b["clip_index"]])
    assert torch.equal(b["weight"], torch.where(is_extra, 0.25, 1.0))
    soft = b["soft"][is_extra]
    assert torch.allclose(soft.max(1).values, torch.full((len(soft),), 0.8))
    assert torch.equal(b["soft"][~is_extra], F.one_hot(b["target"][~is_extra], 3).float())
    assert "view" not in b

    # hard labels: the top-1 class only, no soft targets at all
    hard = _dm(synthetic_root, extra_train=str(manifest), extra_labels="hard")
    hard.setup("fit")
    b = next(iter(hard.train_dataloader()))
    assert "soft" not in b and torch.equal(b["weight"], torch.ones(len(b["target"])))
    names = [Path(hard.segments("train").clips[i].path).parent.name for i in b["clip_index"]]
    assert [CLASSES[t] for t in b["target"].tolist()] == names


def test_extra_clips_that_are_validation_or_test_clips_are_refused_or_dropped(
    synthetic_root, pool, tmp_path, caplog
):
    probe = _dm(synthetic_root)
    held = probe.manifest.select([2]) + probe.manifest.select([3])
    train = probe.manifest.select([1])
    files = [*_pool_files(pool)[:2], held[0].path, held[-1].path, train[0].path]
    manifest = _teacher_manifest(tmp_path / "teacher.csv", files)

    dm = _dm(synthetic_root, extra_train=str(manifest))
    with pytest.raises(ManifestError, match=r"2 of its clip\(s\) are validation or test clips"):
        dm.setup("fit")

    dm = _dm(synthetic_root, extra_train=str(manifest), extra_overlap="drop")
    dm.setup("fit")
    extra = [c for c in dm.segments("train").clips if c.clip_id.startswith("extra:")]
    assert sorted(c.path.name for c in extra) == sorted(f.name for f in files[:2])
    assert "leaving out 2 clip(s)" in caplog.text
    assert "training clips of the dataset already" in caplog.text  # train[0]: its own label


def test_extra_manifest_problems_name_the_option(synthetic_root, tmp_path, write_tone):
    with pytest.raises(ManifestError, match=r"data\.extra_train .*manifest not found"):
        _dm(synthetic_root, extra_train=str(tmp_path / "nope.csv")).setup("fit")
    write_tone(tmp_path / "a.wav")
    bad = write_csv(tmp_path / "bad.csv", ["path", "prob_dog", "prob_cat"], [["a.wav", 0.5, 0.5]])
    with pytest.raises(ManifestError, match=r"data\.extra_train: .*prob_ columns must be"):
        _dm(synthetic_root, extra_train=str(bad)).setup("fit")


def test_unlabelled_clips_bring_a_second_view_and_no_label(synthetic_root, pool):
    from audio_cls.data import WaveformAugment

    dm = _dm(
        synthetic_root,
        unlabelled=[str(pool / "audio")],
        augment=WaveformAugment(gain_db=(-6.0, 6.0), noise_snr_db=None),
        mixup_alpha=0.4,
    )
    assert dm.second_view
    dm.setup("fit")
    clips = dm.segments("train").clips
    assert sum(c.label == -1 for c in clips) == len(_pool_files(pool))
    b = next(iter(dm.train_dataloader()))
    unlabelled = b["target"] < 0
    assert unlabelled.any() and (~unlabelled).any()
    assert b["view"].shape == b["waveform"].shape
    # same window, another gain: the views are proportional, not equal
    ratio = b["view"].abs().amax(1) / b["waveform"].abs().amax(1)
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    assert torch.equal(b["weight"], torch.ones(len(ratio)))

    # mixup mixes labelled clips among themselves; unlabelled ones keep zero targets
    dm.trainer = SimpleNamespace(training=True)
    wave, view = b["waveform"].clone(), b["view"].clone()
    torch.manual_seed(0)
    out = dm.on_after_batch_transfer(dict(b), 0)
    assert torch.equal(out["soft"][unlabelled], torch.zeros(int(unlabelled.sum()), 3))
    assert torch.allclose(out["soft"][~unlabelled].sum(1), torch.ones(int((~unlabelled).sum())))
    assert torch.equal(out["waveform"][unlabelled], wave[unlabelled])
    assert torch.equal(out["view"][unlabelled], view[unlabelled])
    assert not torch.equal(out["view"][~unlabelled], view[~unlabelled])


def test_unlabelled_audio_that_is_a_test_clip_is_refused(synthetic_root):
    probe = _dm(synthetic_root)
    test_clip = probe.manifest.select([3])[0].path
    with pytest.raises(ManifestError, match=r"data\.unlabelled: 1 of its clip"):
        _dm(synthetic_root, unlabelled=[str(test_clip)]).setup("fit")


# ---------------------------------------------------------------------------------------------
# end to end: a student from a teacher's labels, pseudo-labelling rounds


def _fit(dm: AudioDataModule, epochs: int, **options) -> tuple[torch.nn.Module, float]:
    """A small MelCNN fitted on ``dm`` and its clip accuracy on the test folds."""
    from audio_cls.callbacks import ClipAggregation

    L.seed_everything(0)
    model = create_model(
        "mel_cnn",
        3,
        class_names=dm.class_names,
        channels=[8, 16, 32],
        lr=3e-3,
        schedule="constant",
        head_dropout=0.0,
        label_smoothing=0.0,
        **options,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[ClipAggregation()],
    )
    trainer.fit(model, datamodule=dm)
    return model, trainer.test(model, datamodule=dm, verbose=False)[0]["test/clip_acc"]


def test_student_config_parses_with_early_stopping(capsys):
    import yaml

    from audio_cls.cli import main

    config = Path(__file__).parents[1] / "configs" / "student_esc10.yaml"
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    callbacks = [c["class_path"] for c in printed["trainer"]["callbacks"]]
    assert "lightning.pytorch.callbacks.EarlyStopping" in callbacks
    assert printed["data"]["extra_labels"] == "hard" and printed["data"]["extra_weight"] == 0.5
    assert printed["model"]["init_args"]["soft_loss"] == "ce"


E2E_DATA = {"clip_sec": None, "window_sec": 0.5, "drop_silent_db": 20.0, "batch_size": 8}


# the end-to-end check: seeded fits of tiny models, about 15 s on a quiet CPU
def test_a_student_from_teacher_labels_beats_chance(synthetic_root, tmp_path_factory, tmp_path):
    from audio_cls.labelling import label_clips, write_label_manifest

    pool = tmp_path_factory.mktemp("big_pool")
    Synthetic(**{**TINY_SYNTHETIC, "clips_per_class": 12, "seed": 11}).prepare(pool)
    # the teacher: a classifier fitted on labelled clips of its own (another seed's)
    own = tmp_path_factory.mktemp("teacher_data")
    source = Synthetic(**{**TINY_SYNTHETIC, "clips_per_class": 18, "seed": 3})
    teacher_data = AudioDataModule(
        root=str(own),
        source=source,
        num_workers=0,
        train_folds=[1, 2],
        val_folds=[],
        test_folds=[3],
        **E2E_DATA,
    )
    teacher, teacher_acc = _fit(teacher_data, 30)
    labelled = label_clips(teacher.eval(), [str(pool / "audio")])
    truth = torch.tensor([CLASSES.index(Path(p).parent.name) for p in labelled.paths])
    teacher_pool_acc = (labelled.probs.argmax(1) == truth).float().mean().item()
    manifest = write_label_manifest(
        tmp_path / "teacher.csv", labelled.rows(), labelled.class_names, threshold=0.0
    )
    # the students: fold 1's labelled clips and the teacher-labelled pool, tested on fold 3
    results = {}
    for name, data, options in (
        ("hard", {"extra_labels": "hard"}, {}),
        ("soft_kl", {"extra_labels": "soft"}, {"soft_loss": "kl", "distill_temperature": 2.0}),
    ):
        dm = _dm(
            synthetic_root,
            val_folds=[],
            extra_train=str(manifest.path),
            extra_weight=0.5,
            **data,
            **E2E_DATA,
        )
        results[name] = _fit(dm, 30, **options)[1]
    print(f"teacher {teacher_acc:.3f} (pool {teacher_pool_acc:.3f}), students {results}")
    assert teacher_pool_acc > 0.5
    assert all(acc > 1 / 3 + 0.1 for acc in results.values())  # chance: 1/3


def _pseudo_args(root: Path, pool: Path, *extra: str) -> list[str]:
    from tests.test_cli import FAST, TINY_SOURCE

    quickstart = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    return [
        "pseudolabel",
        "--config",
        str(quickstart),
        f"--data.root={root}",
        *TINY_SOURCE,
        *FAST,
        "--data.window_sec=0.5",
        "--model.init_args.channels=[4, 8, 8]",
        "--pseudo.unlabelled",
        str(pool / "audio"),
        *extra,
    ]


def test_pseudo_label_rounds_keep_each_rounds_manifest_and_metrics(
    synthetic_root, pool, tmp_path, monkeypatch, capsys
):
    from audio_cls.cli import main

    monkeypatch.chdir(tmp_path)
    main(
        _pseudo_args(
            synthetic_root,
            pool,
            "--trainer.max_epochs=1",
            "--pseudo.rounds=2",
            "--pseudo.threshold=0.0",
            "--pseudo.weight=0.5",
        )
    )
    out = capsys.readouterr().out
    assert "pseudo-labelling, 2 round(s)" in out
    (folder,) = (tmp_path / "runs" / "quickstart").glob("pseudo_*")
    summary = json.loads((folder / "pseudo_summary.json").read_text())
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and summary["stopped_early"] is None
    assert rounds[0]["manifest"] is None and rounds[0]["num_pseudo"] == 0
    files = _pool_files(pool)
    for k in (1, 2):
        manifest = Path(rounds[k]["manifest"])
        assert manifest == folder / f"round_{k}_pseudo_labels.csv"
        assert rounds[k]["num_pseudo"] == len(files)  # threshold 0: every clip is sure
        assert len(manifest.read_text().splitlines()) == 1 + len(files)
        assert (folder / f"round_{k}" / "metrics_test.json").is_file()
        assert "test/clip_acc" in rounds[k] and Path(rounds[k]["checkpoint"]).is_file()
        config = (folder / f"round_{k}" / "config.yaml").read_text()
        assert f"extra_train: {manifest}" in config and "extra_weight: 0.5" in config


def test_pseudo_labelling_stops_when_no_clip_is_sure(synthetic_root, pool, tmp_path, monkeypatch):
    from audio_cls.commands import UsageError
    from audio_cls.commands.pseudolabel import main as pseudo_main

    monkeypatch.chdir(tmp_path)
    argv = _pseudo_args(synthetic_root, pool, "--trainer.fast_dev_run=true")[1:]
    result = pseudo_main([*argv, "--pseudo.threshold=1.0", "--pseudo.rounds=3"])
    assert len(result["rounds"]) == 1 and "no clip reached" in result["stopped_early"]
    assert list(tmp_path.iterdir()) == []  # fast_dev_run writes nothing
    with pytest.raises(UsageError, match=r"--pseudo\.threshold must be in"):
        pseudo_main([*argv, "--pseudo.threshold=2"])
    with pytest.raises(UsageError, match=r"needs --pseudo\.unlabelled"):
        pseudo_main(argv[: argv.index("--pseudo.unlabelled")])
