"""The command line under abuse: every bad argument is one line and a non-zero exit (never a traceback,
never minutes of work first), an empty token file never turns authentication off, `dyno run` says when
the cloud never answered, files are written atomically, and image folders stay inside themselves."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, needs_fmnist
from PIL import Image

from dyno import zoo
from dyno.cli import main
from dyno.errors import DataError, PlanError
from dyno.offline import nominal_plan
from dyno.plan import Plan

PLAN = DATA / "tiny-plan-v1.json"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``dyno ARGV`` in this process: (exit code, stdout, stderr); argparse's exits count too."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """fmnist-resnet with random weights saved to a file, and a nominal plan for them."""
    root = tmp_path_factory.mktemp("hardening")
    torch.manual_seed(0)
    model = zoo.load_model("fmnist-resnet", weights="random")
    weights = zoo.save_weights(model, "fmnist-resnet", {"note": "untrained, for tests"}, path=root / "w.pt")
    plan = nominal_plan(model, name="fmnist-resnet", options=(("fp32", None),))
    return plan.save(root / "plan.json"), weights, root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BAD = [
    (["serve", "--plan", "p.json", "--max-message-mb", "nan"], "--max-message-mb: expected a finite number"),
    (["serve", "--plan", "p.json", "--metrics-port", "99999"], "--metrics-port: expected an integer -1..65535"),
    (["serve", "--plan", "p.json", "--threads", "-4"], "--threads: expected an integer >= 1"),
    (["serve", "--plan", "p.json", "--port", "99999"], "--port: expected an integer 0..65535"),
    (["bench-runtime", "--cuts", "a,b"], "--cuts: expected an integer"),
    (["bench-runtime", "--requests", "-1"], "--requests: expected an integer >= 1"),
    (["bench-runtime", "--streams", "0"], "--streams: expected an integer 1..4096"),
    (["bench-runtime", "--seconds", "-1"], "--seconds: expected a number > 0"),
    (["bench-runtime", "--max-batch", "0"], "--max-batch: expected an integer 1..4096"),
    (["simulate", "--limit", "-1"], "--limit: expected an integer >= 1"),
    (["analyze", "fmnist-resnet", "--out", "/"], "is a directory"),
    (["plan", "show", str(PLAN), "--plot", "/"], "is a directory"),
    (["run", "--plan", "p.json", "--server", "x:1", "--tls-ca", "/no/such.pem"], "no such file"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_bad_arguments_are_one_line_before_any_work(argv, message, capsys):
    started = time.perf_counter()
    code, out, err = run(argv, capsys)
    assert code == 2 and message in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("dyno ")
    assert time.perf_counter() - started < 10   # refused while parsing, not after the work


def test_demo_refuses_a_bad_tier_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DYNO_CACHE", str(tmp_path))       # an empty cache: training would take minutes
    code, _, err = run(["demo", "--tier", "bogus", "--json"], capsys)
    assert code == 1 and "unknown device tier 'bogus'" in err
    assert not (tmp_path / "weights").exists()


def test_an_unexpected_error_is_one_line_with_a_hint(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)          # a plan nested deeper than JSON can parse
    code, _, err = run(["plan", "show", str(deep)], capsys)
    assert code == 1 and "nests too deeply" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_an_unwritable_plot_is_one_line(capsys):
    code, _, err = run(["plan", "show", str(PLAN), "--plot", "/proc/dyno.png"], capsys)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_empty_token_file_is_an_error_even_with_the_environment_set(files, tmp_path, monkeypatch, capsys):
    plan_path, weights, _ = files
    empty = tmp_path / "token"
    empty.write_text("\n  \n")
    monkeypatch.setenv("DYNO_TOKEN", "s3cret")
    code, _, err = run(["serve", "--plan", str(plan_path), "--weights", str(weights), "--port", "0",
                        "--token-file", str(empty)], capsys)
    assert code == 1 and "holds no token" in err
    monkeypatch.setenv("DYNO_TOKEN", "   ")
    code, _, err = run(["serve", "--plan", str(plan_path), "--weights", str(weights), "--port", "0"], capsys)
    assert code == 1 and "DYNO_TOKEN is set but empty" in err


@needs_fmnist
def test_run_against_nothing_exits_non_zero_and_says_why(files, capsys):
    plan_path, weights, _ = files
    address = f"127.0.0.1:{free_port()}"                      # nothing listens there
    code, out, err = run(["run", "--plan", str(plan_path), "--weights", str(weights), "--server", address,
                          "--data", "fashion-mnist", "--n", "6", "--policy", "cloud-only-raw", "--json"], capsys)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["n"] == 6 and summary["cloud_replies"] == 0 and summary["fallbacks"] == 6
    assert summary["cloud_errors"]                             # the client says what went wrong
    assert code == 1 and f"no inference was answered by the cloud at {address}" in err


def test_concurrent_saves_of_one_plan_never_fail_or_tear(tmp_path):
    plan = Plan.load(PLAN)
    path = tmp_path / "plan.json"
    plan.save(path)
    failures: list[BaseException] = []
    stop = threading.Event()

    def save() -> None:
        try:
            for _ in range(60):
                plan.save(path)
        except BaseException as error:  # noqa: BLE001 - any failure is the finding
            failures.append(error)

    def read() -> None:
        while not stop.is_set():
            try:
                assert Plan.load(path).hash == plan.hash
            except BaseException as error:  # noqa: BLE001
                failures.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=save) for _ in range(2)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join()
    assert failures == []
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]   # no temporary file left behind


def _folder(tmp_path: Path, rows: list[str]) -> Path:
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "labels.tsv").write_text("".join(f"{row}\n" for row in rows))
    return tmp_path


@pytest.mark.parametrize("row", ["../outside.png\t1", "/etc/hostname\t1"])
def test_labels_tsv_cannot_leave_its_folder(tmp_path, row):
    folder = tmp_path / "data"
    folder.mkdir()
    (tmp_path / "outside.png").write_bytes(b"x")
    with pytest.raises(DataError, match="leaves the folder"):
        zoo.load_dataset(_folder(folder, ["ok.png\t0", row]), model="efficientnet-lite0")


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")   # 100 Mpixel, a few kB on disk
    data = zoo.load_dataset(_folder(tmp_path, ["ok.png\t0", "bomb.png\t1"]), model="efficientnet-lite0")
    assert data[0][0].shape == (3, 224, 224)
    with pytest.raises(DataError, match="over the limit"):
        data[1]


def test_a_plan_file_is_never_torn_by_a_crash_mid_write(tmp_path, monkeypatch):
    path = Plan.load(PLAN).save(tmp_path / "plan.json")
    before = path.read_bytes()

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        Plan.load(PLAN).save(path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    with pytest.raises(PlanError):
        Plan.load(tmp_path / "missing.json")


def test_a_file_written_atomically_gets_the_mode_open_would_give_it(tmp_path):
    from dyno.datafile import atomic_write

    mask = os.umask(0o022)
    os.umask(mask)
    path = atomic_write(tmp_path / "a.json", "{}")
    (tmp_path / "b.json").write_text("{}")
    assert path.stat().st_mode & 0o777 == (tmp_path / "b.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_bad_pem_file_is_named_not_a_failed_bind(files, tmp_path, capsys):
    plan_path, weights, _ = files
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    code, _, err = run(["serve", "--plan", str(plan_path), "--weights", str(weights), "--port", "0",
                        "--tls-cert", str(bad), "--tls-key", str(bad)], capsys)
    assert code == 1 and "not a PEM certificate" in err and str(bad) in err and "Failed to bind" not in err


def test_bench_runtime_abuse_flags_are_checked(capsys):
    code, _, err = run(["bench-runtime", "--what", "abuse", "--junk", "-1"], capsys)
    assert code == 2 and "--junk: expected an integer >= 0" in err
