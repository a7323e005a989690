"""Pretrained weights as a registry concern: tags, paths, classifier dropping, mismatches."""

import dataclasses

import lightning as L
import pytest
import torch

from audio_cls.models import MelCNN, create_model, get_model_entry, list_models, list_pretrained
from audio_cls.models.registry import OWN_WEIGHTS, PretrainedConfig, resolve_pretrained
from audio_cls.nn.weights import PretrainedWeightsError

TINY = {"channels": [4, 8, 8]}


def _checkpoint(path, num_classes, **options):
    torch.manual_seed(1)
    model = create_model("mel_cnn", num_classes, **{**TINY, **options})
    model.train()(torch.randn(2, 8000))  # BatchNorm statistics off their defaults
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return model


def _equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_another_run_fine_tunes_with_a_new_classifier(tmp_path):
    source = _checkpoint(tmp_path / "run.ckpt", 5)
    torch.manual_seed(2)
    model = create_model("mel_cnn", 3, pretrained=str(tmp_path / "run.ckpt"), **TINY)
    assert _equal(model.backbone, source.backbone) and _equal(model.frontend, source.frontend)
    assert model.head.fc.weight.shape == (3, 8)  # 5 classes there: the classifier is new


def test_same_class_count_loads_the_classifier_too(tmp_path):
    source = _checkpoint(tmp_path / "run.ckpt", 3)
    model = create_model("mel_cnn", 3, pretrained=str(tmp_path / "run.ckpt"), **TINY)
    assert _equal(model, source)


def test_plain_state_dict_file(tmp_path):
    source = _checkpoint(tmp_path / "run.ckpt", 3)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = create_model("mel_cnn", 3, pretrained=str(tmp_path / "weights.pth"), **TINY)
    assert _equal(model, source)


def test_other_architecture_lists_mis_shaped_keys(tmp_path):
    _checkpoint(tmp_path / "run.ckpt", 3, channels=[4, 8, 16])
    with pytest.raises(PretrainedWeightsError, match="mis-shaped") as err:
        create_model("mel_cnn", 3, pretrained=str(tmp_path / "run.ckpt"), **TINY)
    assert "backbone.blocks.1" in str(err.value)


def test_missing_weights_file_is_one_clear_line(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="not found") as err:
        create_model("mel_cnn", 3, pretrained=str(tmp_path / "nope.pth"), **TINY)
    assert "\n" not in str(err.value)


def test_fit_setup_loads_and_resume_or_test_do_not(tmp_path):
    source = _checkpoint(tmp_path / "run.ckpt", 3)
    model = MelCNN(num_classes=3, pretrained=str(tmp_path / "run.ckpt"), **TINY)
    assert not _equal(model, source), "nothing loads at construction"
    model.setup("test")
    assert not _equal(model, source), "rebuilding for test/predict never fetches"
    model.setup("fit")
    assert _equal(model, source)


def test_front_end_the_weights_expect_is_checked_first(tmp_path):
    model = create_model("mel_cnn", 3, **TINY)
    config = PretrainedConfig(
        tag="x",
        source=str(tmp_path / "never-read.pth"),
        frontend={"sample_rate": 22050, "n_mels": 64},
    )
    with pytest.raises(PretrainedWeightsError, match="sample_rate 22050 \\(ours 16000\\)") as err:
        config.load_into(model)
    assert "--data.sample_rate" in str(err.value)


def test_label_names_of_the_weights_are_kept_when_the_classes_match(tmp_path):
    _checkpoint(tmp_path / "run.ckpt", 3)
    model = create_model("mel_cnn", 3, **TINY)
    config = dataclasses.replace(
        OWN_WEIGHTS, source=str(tmp_path / "run.ckpt"), class_names=("x", "y", "z")
    )
    config.load_into(model)
    assert model.class_names == ["x", "y", "z"]


def test_tags_resolve_and_paths_use_the_family_template():
    model = create_model("vjepa2", 3, d_model=32, depth=1, num_heads=2)
    tags = [config.tag for name, config in list_pretrained("vjepa2")]
    assert "vjepa2_vitl_fpc64_256" in tags
    assert resolve_pretrained(model, tags[0]).source.startswith("facebook/")
    local = resolve_pretrained(model, "/data/vjepa2")
    assert local.source == "/data/vjepa2" and local.rename and not local.tag
    assert (
        resolve_pretrained(create_model("mel_cnn", 3, **TINY), "x.pth").rename == OWN_WEIGHTS.rename
    )


@pytest.mark.parametrize(
    "name", [n for n in list_models() if get_model_entry(n).pretrained], ids=str
)
def test_a_run_of_a_family_with_published_weights_starts_another(name, tmp_path):
    """``pretrained: run.ckpt`` reads our own names, whatever layout (h5, npy, renames) the
    family's published weights have."""
    entry = get_model_entry(name)
    rate = entry.frontend.sample_rate or 16000
    torch.manual_seed(1)
    source = create_model(name, 3, sample_rate=rate, **entry.tiny)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(source)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    torch.manual_seed(2)
    model = create_model(
        name, 3, sample_rate=rate, pretrained=str(tmp_path / "run.ckpt"), **entry.tiny
    )
    assert _equal(model, source)


@pytest.mark.parametrize("name", ["soundnet8", "esresnext_fbsp"])
def test_a_run_at_another_rate_than_the_published_weights_starts_another(name, tmp_path):
    """The published weights' front end is not asked of one of our own runs."""
    entry = get_model_entry(name)
    other = {"sample_rate": entry.frontend.sample_rate // 2}
    torch.manual_seed(1)
    source = create_model(name, 3, frontend=other, **entry.tiny)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(source)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    model = create_model(
        name, 3, frontend=other, pretrained=str(tmp_path / "run.ckpt"), **entry.tiny
    )
    assert _equal(model, source)
