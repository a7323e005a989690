"""SoundNet classifier: the 8-layer raw-waveform CNN, pooled over time, then a linear head.

Paper: Aytar, Vondrick & Torralba, "SoundNet: Learning Sound Representations from Unlabeled
Video" (NeurIPS 2016), https://arxiv.org/abs/1610.09001; backbone in
:class:`audio_cls.nn.soundnet.SoundNet8`. Input: 22.05 kHz waveform scaled to [-256, 256], as
the original Torch7 code (``extract_feat.lua``: "make range [-256, 256]") and the TensorFlow
port (``util.preprocess``: ``raw_audio *= 256``) feed it; BatchNorm after conv1 makes the
scale harmless when training from scratch. Features are mean-pooled over time: the paper's
linear classifiers average their scores over windows of one layer's activations, which for a
linear classifier is the same as classifying the mean.

Weights: ``sound8.npy`` (github.com/eborboihuc/SoundNet-tensorflow, MIT; converted from the
authors' ``soundnet8_final.t7``, github.com/cvondrick/soundnet, MIT), a pickled dict
``{conv1..conv7: {weights (k, 1, in, out), biases, gamma, beta, mean, var}, conv8, conv8_2:
{weights, biases}}``. It has no stable URL: download it and pass its local path as
``pretrained``. conv1..conv7 load into the backbone; conv8 / conv8_2 (objects / scenes) load
only into a model built with ``teacher_heads: true``.
"""

from __future__ import annotations

import torch

from audio_cls.models.base import AudioClassifier
from audio_cls.models.registry import PretrainedConfig, register_model
from audio_cls.nn.frontends import WaveformSettings
from audio_cls.nn.soundnet import SOUNDNET8_LAYERS, SoundNet8
from audio_cls.nn.weights import PretrainedWeightsError

__all__ = ["SoundNetClassifier"]

#: sound8.npy's batch-norm names -> ours, under ``conv{i}.bn``.
_BN_NAMES = {"gamma": "weight", "beta": "bias", "mean": "running_mean", "var": "running_var"}
_HEADS = ("conv8", "conv8_2")


def _from_sound8(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``sound8.npy`` tensors (``conv1.weights`` ...) -> :class:`SoundNet8` names and layouts.

    Kernels go from TensorFlow's ``(k, 1, in, out)`` to ``Conv1d``'s ``(out, in, k)``; each
    batch norm gets a zero ``num_batches_tracked``. Names it does not know pass unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in weights.items():
        layer, _, name = key.partition(".")
        conv = f"{layer}." if layer in _HEADS else f"{layer}.conv."
        if name == "weights":
            if value.ndim != 4 or value.shape[1] != 1:
                raise PretrainedWeightsError(
                    f"SoundNet weights: {key} has shape {tuple(value.shape)}, not (kernel, 1, in, "
                    "out) as in sound8.npy of SoundNet-tensorflow; pass that file"
                )
            out[f"{conv}weight"] = value[:, 0].permute(2, 1, 0).contiguous()  # (out in k)
        elif name == "biases":
            out[f"{conv}bias"] = value
        elif name in _BN_NAMES:
            out[f"{layer}.bn.{_BN_NAMES[name]}"] = value
            if name == "mean":
                out[f"{layer}.bn.num_batches_tracked"] = torch.tensor(0)
        else:
            out[key] = value
    return out


@register_model(
    "soundnet8",
    tiny={"width": 0.125},
    pretrained=(
        PretrainedConfig(
            tag="soundnet8",
            source=None,  # no stable URL: pass the local path of sound8.npy
            format="npy",
            convert=_from_sound8,
            rename=(("", "backbone."),),
            # conv1 up to the model's output_layer (the registry skips layers it does not
            # build); the teacher heads where the model has them (teacher_heads: true)
            covers=tuple(f"backbone.{layer.name}." for layer in SOUNDNET8_LAYERS),
            optional=tuple(f"backbone.{head}." for head in _HEADS),
            frontend={"sample_rate": 22050, "scale": 256.0, "normalize": False},
            model_args={"width": 1.0},
            description="SoundNet 8-layer (Flickr videos, ImageNet + Places teachers): "
            "conv1-conv7 from sound8.npy (pass its local path)",
        ),
    ),
)
class SoundNetClassifier(AudioClassifier):
    """SoundNet's 8-layer raw-waveform CNN, mean-pooled over time."""

    backbone_cls = SoundNet8
    default_frontend = WaveformSettings(sample_rate=22050, scale=256.0)
    default_pooling = "mean"
