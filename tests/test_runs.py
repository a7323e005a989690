"""Run directories: claimed atomically, re-rooted by ``--trainer.default_root_dir``, never written
by ``fast_dev_run``, refused early when unwritable; W&B runs per cross-validation fold; the data
module's unreadable clips listed in ``bad_files.csv``."""

import csv
import errno
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from audio_cls.callbacks import RunReport
from audio_cls.cli import main
from audio_cls.commands.lightning import RunDirectoryError, claim_version
from tests.test_cli import FAST as CLI_FAST
from tests.test_cli import TINY_SOURCE

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
FAST = [*CLI_FAST, "--data.window_sec=0.5"]


def _common(root: Path) -> list[str]:
    return ["--config", QUICKSTART, f"--data.root={root}", *TINY_SOURCE, *FAST]


# ---------------------------------------------------------------------------------------------
# claiming run directories


def test_concurrent_claims_get_distinct_versions(tmp_path):
    (tmp_path / "version_3").mkdir()  # numbering goes on after what is there
    got, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        got.append(claim_version(tmp_path))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(4, 12))
    assert all((tmp_path / f"version_{n}").is_dir() for n in got)


def test_two_fits_started_together_get_their_own_run_directories(synthetic_root, tmp_path):
    argv = [sys.executable, "-m", "audio_cls.cli", "fit", *_common(synthetic_root)]
    argv.append("--trainer.max_epochs=1")
    procs = [
        subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    for proc in procs:
        out = proc.communicate(timeout=240)[0].decode(errors="replace")
        assert proc.returncode == 0, out[-3000:]
    runs = tmp_path / "runs" / "quickstart"
    assert sorted(p.name for p in runs.iterdir()) == ["latest", "version_0", "version_1"]
    for version in ("version_0", "version_1"):
        run = runs / version
        val = json.loads((run / "metrics_val.json").read_text())
        assert len(val["history"]) == 1  # one run's epochs, not a mix
        assert (run / "metrics_test.json").is_file() and (run / "config.yaml").is_file()
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["epoch"] == 0
        with (run / "metrics.csv").open() as f:
            assert sum(bool(r.get("val/loss")) for r in csv.DictReader(f)) == 1


# ---------------------------------------------------------------------------------------------
# --trainer.default_root_dir and fast_dev_run


def test_default_root_dir_takes_everything_the_run_writes(synthetic_root, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "cwd" / "elsewhere"
    main(
        [
            "fit",
            *_common(synthetic_root),
            "--trainer.max_epochs=1",
            f"--trainer.default_root_dir={out}",
        ]
    )
    assert [p.name for p in cwd.iterdir()] == ["elsewhere"]
    run = out / "runs" / "quickstart" / "version_0"
    for name in (
        "config.yaml",
        "metrics.csv",
        "metrics_val.json",
        "metrics_test.json",
        "predictions.csv",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
    ):
        assert (run / name).is_file(), name
    assert (out / "runs" / "quickstart" / "latest").resolve() == run.resolve()


@pytest.mark.parametrize("with_root_dir", [False, True])
def test_fast_dev_run_writes_nothing(synthetic_root, tmp_path, monkeypatch, with_root_dir):
    monkeypatch.chdir(tmp_path)
    extra = [f"--trainer.default_root_dir={tmp_path / 'out'}"] if with_root_dir else []
    main(["fit", *_common(synthetic_root), "--trainer.fast_dev_run=true", *extra])
    assert list(tmp_path.iterdir()) == []


def test_cv_fast_dev_run_runs_a_batch_per_fold(synthetic_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["cv", *_common(synthetic_root), "--trainer.fast_dev_run=true"])
    table = capsys.readouterr().out.split("cross-validation over folds")[1].splitlines()[2:]
    assert [line.split()[0] for line in table] == ["1", "2", "3", "mean", "std"]
    assert list(tmp_path.iterdir()) == []  # no cv_summary.json: a debugging pass writes nothing


# ---------------------------------------------------------------------------------------------
# unwritable output


def _fails_with_one_line(argv: list[str], monkeypatch, capsys) -> str:
    """Through the console entry point (sys.argv): exit status 2 and one ``error:`` line."""
    monkeypatch.setattr(sys, "argv", ["audio-cls", *argv])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("audio-cls: error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_stops_before_training(
    synthetic_root, tmp_path, monkeypatch, capsys
):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = _fails_with_one_line(
            ["fit", *_common(synthetic_root), f"--trainer.default_root_dir={locked}"],
            monkeypatch,
            capsys,
        )
    finally:
        locked.chmod(0o755)
    assert str(locked) in line and "permission denied" in line
    assert list(locked.iterdir()) == []


def test_unwritable_run_directory_is_named_before_training(
    synthetic_root, tmp_path, monkeypatch, capsys
):
    # what a read-only file system answers, whoever runs it
    import tempfile

    out = tmp_path / "out"
    real = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).is_relative_to(out):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    line = _fails_with_one_line(
        ["fit", *_common(synthetic_root), f"--trainer.default_root_dir={out}"], monkeypatch, capsys
    )
    run = out / "runs" / "quickstart" / "version_0"
    assert line == (
        f"audio-cls: error: cannot write in the run directory {run}: read-only file system"
    )
    assert not out.exists()  # stopped before any training, the folders it made removed


def test_a_run_that_fails_before_writing_leaves_no_folder(synthetic_root, tmp_path, monkeypatch):
    from audio_cls.data.sources import ManifestError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ManifestError, match=r"fold\(s\) \[9\]"):
        main(["fit", *_common(synthetic_root), "--data.train_folds=[9]"])
    assert list(tmp_path.iterdir()) == []


def test_claim_names_the_folder_it_cannot_create(tmp_path, monkeypatch):
    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(os, "mkdir", denied)
    with pytest.raises(RunDirectoryError, match=rf"{tmp_path / 'runs'}: permission denied"):
        claim_version(tmp_path / "runs")


def test_full_disk_mid_run_stops_with_one_line_and_keeps_last_ckpt(
    synthetic_root, tmp_path, monkeypatch, capsys
):
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        # the disk fills up once the first epoch's last.ckpt is on it
        if Path(dst).name == "last.ckpt" and Path(dst).exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    argv = ["fit", *_common(synthetic_root), "--trainer.max_epochs=3"]
    line = _fails_with_one_line([*argv, f"--trainer.default_root_dir={out}"], monkeypatch, capsys)
    last = out / "runs" / "quickstart" / "version_0" / "checkpoints" / "last.ckpt"
    assert line.startswith(f"audio-cls: error: cannot write checkpoint {last}: ")
    assert "no space left on device" in line
    monkeypatch.undo()
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the previous one, whole
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]


# ---------------------------------------------------------------------------------------------
# W&B in cross-validation


def _wandb_records(path: Path) -> list:
    """The records of an offline run's ``run-*.wandb`` file (a LevelDB-style log of protobufs:
    7-byte file header, 32 KiB blocks, each chunk crc32/length/type then data)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, records, pending, pos = path.read_bytes(), [], b"", 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_cv_makes_one_finished_wandb_run_per_fold_and_a_summary(
    synthetic_root, tmp_path, monkeypatch, recwarn
):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-default"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = cwd / "out"
    # W&B reads its settings once a process: earlier tests set it up disabled
    wandb.teardown()
    try:
        main(
            [
                "cv",
                *_common(synthetic_root),
                "--trainer.max_epochs=1",
                f"--trainer.default_root_dir={out}",
            ]
        )
    finally:
        monkeypatch.undo()
        wandb.teardown()

    assert [p.name for p in cwd.iterdir()] == ["out"]  # W&B files re-rooted too
    summary_file = next((out / "runs" / "quickstart").glob("cv_*/cv_summary.json"))
    tag = summary_file.parent.name
    summary = json.loads(summary_file.read_text())["summary"]
    runs = sorted((out / "runs" / "wandb").glob("offline-run-*"))
    seen = {}
    for run in runs:
        records = _wandb_records(next(run.glob("run-*.wandb")))
        kinds = [r.WhichOneof("record_type") for r in records]
        info = next(r.run for r in records if r.HasField("run"))
        exits = [r.exit.exit_code for r in records if r.HasField("exit")]
        assert exits == [0], (run, kinds)  # finished, cleanly
        assert "HandleAbandonedError" not in (run / "logs" / "debug.log").read_text()
        seen[info.display_name] = (info.run_group, info.job_type, records)
    base = f"quickstart-{tag}"
    assert sorted(seen) == sorted([f"{base}-fold{k}" for k in (1, 2, 3)] + [f"{base}-summary"])
    assert {group for group, _, _ in seen.values()} == {base}
    assert seen[f"{base}-summary"][1] == "cv-summary" and seen[f"{base}-fold1"][1] == "cv-fold"
    logged = {
        item.key: json.loads(item.value_json)
        for r in seen[f"{base}-summary"][2]
        if r.HasField("summary")
        for item in r.summary.update
    }
    assert logged["test/clip_acc_mean"] == pytest.approx(summary["test/clip_acc"]["mean"])
    assert logged["test/clip_acc_std"] == pytest.approx(summary["test/clip_acc"]["std"])
    assert not [w for w in recwarn if "already in progress" in str(w.message)]


# ---------------------------------------------------------------------------------------------
# bad_files.csv


def _stub_trainer(run_dir: Path, bad_files, fast_dev_run=False):
    return SimpleNamespace(
        fast_dev_run=fast_dev_run,
        log_dir=str(run_dir),
        default_root_dir=str(run_dir),
        is_global_zero=True,
        datamodule=SimpleNamespace(bad_files=bad_files),
    )


def test_run_report_lists_skipped_clips(tmp_path):
    bad = [("train", "/data/a.wav", "not an audio file"), ("test", "/data/b,c.wav", "empty")]
    RunReport().setup(_stub_trainer(tmp_path / "run", bad), None, "fit")
    with (tmp_path / "run" / "bad_files.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["split", "path", "reason"], *map(list, bad)]


def test_run_report_writes_no_bad_files_csv_without_skips(tmp_path):
    RunReport().setup(_stub_trainer(tmp_path / "a", []), None, "fit")
    no_attribute = _stub_trainer(tmp_path / "b", None)
    no_attribute.datamodule = SimpleNamespace()  # a data module without the list
    RunReport().setup(no_attribute, None, "fit")
    RunReport().setup(_stub_trainer(tmp_path / "c", [("t", "p", "r")], True), None, "fit")
    assert not list(tmp_path.rglob("bad_files.csv"))


def test_a_run_that_skipped_files_lists_them_in_bad_files_csv(tmp_path, monkeypatch):
    """End to end: a corrupt clip in a class folder, --data.on_bad_file skip."""
    from tests.test_cli import make_folder_tree

    root = make_folder_tree(tmp_path / "sounds")
    (root / "knock" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    monkeypatch.chdir(tmp_path)
    config = str(Path(__file__).parents[1] / "configs" / "cnn_folder.yaml")
    main(
        [
            "fit",
            "--config",
            config,
            f"--data.root={root}",
            "--data.on_bad_file=skip",
            "--trainer.max_epochs=1",
            "--trainer.logger=false",
            *FAST,
        ]
    )
    (bad,) = list((tmp_path / "runs").rglob("bad_files.csv"))
    rows = list(csv.DictReader(bad.read_text().splitlines()))
    assert [Path(r["path"]).name for r in rows] == ["broken.wav"]
    assert rows[0]["split"] in ("train", "val", "test") and rows[0]["reason"]
