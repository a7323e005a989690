import pytest
import torch

from audio_cls.inference import aggregate_clips

PROBS = torch.tensor([[0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.9, 0.1]])
CLIPS = torch.tensor([0, 0, 0, 2])  # clip 1 has no windows


def test_mean():
    out = aggregate_clips(PROBS, CLIPS, 3, "mean")
    assert torch.allclose(out[0], torch.tensor([1.1 / 3, 1.9 / 3]))
    assert torch.allclose(out[2], torch.tensor([0.9, 0.1]))
    assert out[1].abs().sum() == 0


def test_logit_mean_is_normalised_geometric_mean():
    out = aggregate_clips(PROBS, CLIPS, 3, "logit_mean")
    g = PROBS[:3].log().mean(0).exp()
    assert torch.allclose(out[0], g / g.sum(), atol=1e-6)


def test_max():
    out = aggregate_clips(PROBS, CLIPS, 3, "max")
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]) / 1.4)


def test_vote():
    out = aggregate_clips(PROBS, CLIPS, 3, "vote")
    assert torch.allclose(out[0], torch.tensor([1 / 3, 2 / 3]))
    assert out[1].abs().sum() == 0


def test_vote_and_mean_can_disagree():
    probs = torch.tensor([[0.51, 0.49], [0.51, 0.49], [0.0, 1.0]])
    clips = torch.zeros(3, dtype=torch.long)
    assert aggregate_clips(probs, clips, 1, "vote").argmax() == 0
    assert aggregate_clips(probs, clips, 1, "mean").argmax() == 1


def test_unknown_method():
    with pytest.raises(ValueError, match="unknown clip aggregation"):
        aggregate_clips(PROBS, CLIPS, 3, "median")
