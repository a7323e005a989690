"""One verb mechanism: every verb in --help, --config and --print_config, dashes for
underscores, bare inputs, clear one-line errors, pretrained tags listed."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from audio_cls.cli import main
from audio_cls.commands import VERBS, UsageError
from audio_cls.models.base import CheckpointMismatchError
from tests.conftest import save_tiny_checkpoint

SR = 16000
QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny MelCNN checkpoint with 0.5 s windows, as `fit` writes it."""
    path = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.ckpt", ["a", "b", "c"])
    return path


@pytest.fixture
def clips(tmp_path, write_tone):
    return [
        write_tone(tmp_path / "in" / f"t{i}.wav", seconds=1.0, freq=300 * (i + 1)) for i in range(3)
    ]


def test_help_lists_every_verb(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert all(f"  {verb} " in out for verb in VERBS)


@pytest.mark.parametrize("verb", [v for v, spec in VERBS.items() if spec.function])
def test_function_verbs_have_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0
    assert "--print_config" in capsys.readouterr().out


def test_classify_dashes_bare_inputs_and_config(checkpoint, clips, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(
        ["classify", "--ckpt", str(checkpoint), *map(str, clips), "--top-k", "2", "--out", "a.csv"]
    )
    rows = list(csv.DictReader(Path("a.csv").read_text().splitlines()))
    assert [r["clip_id"] for r in rows] == ["t0", "t1", "t2"] and "top2" in rows[0]
    # the same run from a YAML of classify's own options
    Path("c.yaml").write_text(
        yaml.safe_dump(
            {"ckpt": str(checkpoint), "inputs": [str(c) for c in clips], "top_k": 2, "out": "b.csv"}
        )
    )
    main(["classify", "--config", "c.yaml"])
    assert Path("b.csv").read_text() == Path("a.csv").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["classify", "--config", "c.yaml", "--top_k", "5", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["top_k"] == 5 and printed["inputs"] == [str(c) for c in clips]


def test_classify_lists_unreadable_files_and_labels_the_rest(checkpoint, clips, tmp_path, capsys):
    bad = tmp_path / "in" / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage")
    out = tmp_path / "p.csv"
    main(["classify", "--ckpt", str(checkpoint), str(tmp_path / "in"), "--out", str(out)])
    rows = {r["clip_id"]: r for r in csv.DictReader(out.read_text().splitlines())}
    assert rows["broken"]["error"] and not rows["broken"]["prediction"]
    assert all(rows[f"t{i}"]["prediction"] and not rows[f"t{i}"]["error"] for i in range(3))
    assert "skipped broken" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "classify",
                "--ckpt",
                str(checkpoint),
                str(tmp_path / "in"),
                "--out",
                str(out),
                "--strict",
                "true",
            ]
        )
    assert exit_.value.code == 1


def test_classify_writes_a_submission_of_ids_and_categories(checkpoint, clips, tmp_path, capsys):
    main(["classify", "--ckpt", str(checkpoint), str(tmp_path / "in"), "--out",
          str(tmp_path / "s.csv"), "--format", "submission"])  # fmt: skip
    rows = list(csv.DictReader((tmp_path / "s.csv").read_text().splitlines()))
    assert list(rows[0]) == ["Id", "Category"]
    assert [r["Id"] for r in rows] == ["t0", "t1", "t2"]
    assert {r["Category"] for r in rows} <= {"a", "b", "c"}
    (tmp_path / "in" / "broken.wav").write_bytes(b"RIFF\x00\x00garbage")
    with pytest.raises(SystemExit) as exit_:  # a submission without every Id is invalid
        main(["classify", "--ckpt", str(checkpoint), str(tmp_path / "in"), "--out",
              str(tmp_path / "s.csv"), "--format", "submission"])  # fmt: skip
    assert exit_.value.code == 1
    assert [r["Id"] for r in csv.DictReader((tmp_path / "s.csv").open())] == ["t0", "t1", "t2"]
    assert "skipped broken" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--top_k", "0", "--top_k must be >= 1"),
        ("--tta", "0", "--tta must be >= 1"),
        ("--limit", "0", "--limit must be >= 1"),
    ],
)
def test_classify_option_ranges(checkpoint, clips, option, value, message):
    with pytest.raises(UsageError, match=message):
        main(["classify", "--ckpt", str(checkpoint), str(clips[0]), option, value])


def test_classify_refuses_an_unwritable_output_before_predicting(checkpoint, clips, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match=r"--out .*cannot write there"):
        main(
            ["classify", "--ckpt", str(checkpoint), str(clips[0]), "--out", str(blocker / "p.csv")]
        )


def test_one_line_errors_without_traceback(tmp_path):
    """Through the console script: a missing checkpoint is one clear line, exit status 2."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "audio_cls.cli",
            "classify",
            "--ckpt",
            str(tmp_path / "no.ckpt"),
            "x.wav",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"audio-cls: error: {tmp_path / 'no.ckpt'}: checkpoint not found"
    ]


def test_models_lists_families_and_pretrained_tags(capsys):
    main(["models"])
    out = capsys.readouterr().out
    assert "mel_cnn" in out and "logmel" in out
    main(["models", "--pretrained"])  # a bare flag
    assert "vjepa2_vitl_fpc64_256" in capsys.readouterr().out


def test_cv_print_config_shows_cv_options_beside_the_training_config(capsys):
    options = ["--cv.folds", "1", "2", "3", "--cv.test_folds", "2", "--print_config"]
    main(["cv", "--config", QUICKSTART, *options])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["cv"] == {"folds": [1, 2, 3], "test_folds": [2], "val": "next", "boost": False}
    assert printed["model"]["class_path"] == "audio_cls.models.MelCNN"


def _audio_cls(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "audio_cls.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_a_refused_option_value_is_one_line_not_jsonargparse_noise(tmp_path):
    proc = _audio_cls(
        "fit",
        "--config",
        QUICKSTART,
        "--data.sample_rate",
        "22050",
        "--model.frontend.n_fft",
        "512",
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("audio-cls: error:")]
    assert "551 samples at 22050 Hz, more than n_fft=512" in line
    assert "Union subtypes" not in proc.stderr


def test_a_folder_given_as_checkpoint(tmp_path, clips):
    with pytest.raises(CheckpointMismatchError, match="is a folder"):
        main(["classify", "--ckpt", str(tmp_path), str(clips[0])])
