"""Non-finite outputs stop a run with the clips named, and never become a confident label."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from audio_cls.inference import Predictor, WindowSettings
from audio_cls.models import create_model
from audio_cls.models.base import NonFiniteError

SR = 16000


def _model():
    torch.manual_seed(0)
    return create_model("mel_cnn", 3, channels=[4, 8, 8], sample_rate=SR)


def _batch(waves: torch.Tensor) -> dict[str, torch.Tensor]:
    n = len(waves)
    return {
        "waveform": waves,
        "target": torch.zeros(n, dtype=torch.long),
        "clip_index": torch.arange(n),
        "segment_index": torch.arange(n),
    }


class _Trainer(SimpleNamespace):
    """What the model looks up: the data module's documented ``segments`` method."""


def _attach(model, paths):
    split = SimpleNamespace(clips=[SimpleNamespace(path=Path(p)) for p in paths])
    datamodule = SimpleNamespace(segments=lambda stage: split)
    model._trainer = _Trainer(datamodule=datamodule, callbacks=[], current_epoch=0)
    return model


def test_training_loss_that_is_not_finite_names_the_clip():
    model = _attach(_model().train(), ["a.wav", "huge.wav", "c.wav"])
    waves = torch.randn(3, SR // 2) * 0.1
    waves[1, 100] = 1e30  # finite, but its power spectrum overflows float32
    with pytest.raises(NonFiniteError, match=r"training loss became nan .*huge\.wav") as err:
        model.training_step(_batch(waves), 0)
    assert "a.wav" not in str(err.value) and "\n" not in str(err.value)


def test_weights_that_are_not_finite_are_named_as_the_cause():
    model = _attach(_model().train(), ["a.wav", "b.wav"])
    with torch.no_grad():
        model.head.fc.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="weights are no longer finite"):
        model.training_step(_batch(torch.randn(2, SR // 2) * 0.1), 0)


def test_evaluation_refuses_non_finite_probabilities():
    model = _attach(_model().eval(), ["x.wav", "y.wav"])
    waves = torch.randn(2, SR // 2) * 0.1
    waves[0, 5] = 1e30
    with torch.no_grad(), pytest.raises(NonFiniteError, match=r"probabilities .*x\.wav"):
        model.validation_step(_batch(waves), 0)


def test_classify_reports_a_clip_whose_output_is_not_finite():
    predictor = Predictor(_model(), WindowSettings(SR, 0.5))
    quiet = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    huge = quiet.copy()
    huge[1000] = 1e30
    assert predictor.predict_waveform(quiet, "ok").error is None
    bad = predictor.predict_waveform(huge, "huge")
    assert bad.error is not None and "not finite" in bad.error and bad.probs.numel() == 0
