"""One head per backbone tap (SoundNet's pool5, conv6, conv7): summed loss, mean of the heads'
probabilities, concatenated embeddings."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from audio_cls.models import create_model, load_classifier

TAPS = ["pool5", "conv6", "conv7"]
RATE = 22050


def soundnet(**options):
    torch.manual_seed(0)
    return create_model("soundnet8", 4, width=0.125, taps=TAPS, head_dropout=0.0, **options)


def test_prediction_is_the_mean_of_the_heads_probabilities():
    model = soundnet().eval()
    wave = torch.randn(3, RATE)
    with torch.no_grad():
        taps = model.forward_features(wave)
        per_head = [model.head.heads[t](taps[t]).softmax(-1) for t in TAPS]
        probs = model(wave).softmax(-1)
    torch.testing.assert_close(probs, torch.stack(per_head).mean(0))
    torch.testing.assert_close(model.predict_proba(wave), probs)


def test_training_loss_is_the_sum_of_the_heads_losses():
    model = soundnet().train()
    model.log = lambda *args, **kwargs: None  # no Trainer here
    batch = {"waveform": torch.randn(4, RATE), "target": torch.tensor([0, 1, 2, 3])}
    torch.manual_seed(1)
    loss = model.training_step(batch, 0)
    torch.manual_seed(1)
    taps = model.forward_features(batch["waveform"])
    expected = sum(
        F.cross_entropy(model.head.heads[t](taps[t]), batch["target"], label_smoothing=0.1)
        for t in TAPS
    )
    torch.testing.assert_close(loss, expected)
    loss.backward()
    for t in TAPS:  # every head learns
        assert model.head.heads[t].fc.weight.grad.abs().sum() > 0


def test_embedding_concatenates_the_taps_or_takes_the_chosen_one():
    model = soundnet().eval()
    widths = model.backbone.tap_features
    wave = torch.randn(2, RATE)
    assert model.num_features == sum(widths[t] for t in TAPS)
    assert model.embed(wave).shape == (2, model.num_features)
    assert model.forward_intermediates(wave)["embedding"].shape == (2, model.num_features)

    one = soundnet(tap_combine="conv6").eval()
    with torch.no_grad():
        taps = one.forward_features(wave)
        torch.testing.assert_close(one(wave), one.head.heads["conv6"](taps["conv6"]))
    assert one.embed(wave).shape == (2, widths["conv6"])


def test_checkpoint_round_trip_keeps_the_heads(tmp_path):
    model = soundnet(tap_combine="mean")
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded, _ = load_classifier(tmp_path / "m.ckpt")
    wave = torch.randn(2, RATE)
    torch.testing.assert_close(loaded(wave), model.eval()(wave))
    assert loaded.taps == TAPS


def test_unknown_tap_or_a_backbone_without_taps_is_one_clear_line():
    with pytest.raises(ValueError, match=r"--model.taps \['conv9'\]: SoundNet8 has taps pool1"):
        create_model("soundnet8", 3, width=0.125, taps=["conv9"])
    with pytest.raises(ValueError, match="offers no taps"):
        create_model("mel_cnn", 3, channels=[4, 8, 8], taps=["layer1"])
    with pytest.raises(ValueError, match=r"--model\.tap_combine 'conv2'"):
        create_model("soundnet8", 3, width=0.125, taps=TAPS, tap_combine="conv2")


def test_a_multi_head_run_starts_another_with_other_classes(tmp_path):
    source = soundnet()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(source)
    trainer.save_checkpoint(tmp_path / "four.ckpt")
    model = create_model(
        "soundnet8", 6, width=0.125, taps=TAPS, pretrained=str(tmp_path / "four.ckpt")
    )
    assert torch.equal(model.backbone.conv3.conv.weight, source.backbone.conv3.conv.weight)
    assert model.head.heads["conv6"].fc.weight.shape[0] == 6  # each head's classifier is new
