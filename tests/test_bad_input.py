"""Bad input across every command: one line naming the fix, the right exit code, no traceback,
and nothing half-written under --out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fakes import TINY_POOL_ARGS

from dgkd.cli import ablate_main, search_main, train_main

TINY = ["--set", "epochs=1", "--set", "teacher_epochs=1", *TINY_POOL_ARGS]


def _study(tmp: Path, text: str, name: str = "mine") -> str:
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return str(path)


def _good_study(**changes: str) -> str:
    keys = {"space": '"eps"', "sampler": '"tpe"', "pruner": '"median"', "trials": "2"}
    keys.update(changes)
    head = "\n".join(f"{k} = {v}" for k, v in keys.items())
    base = 'method = "dgkd"\nepochs = 1\nteacher_epochs = 1\nval_pool = 200\ntest_pool = 400\n'
    return f"{head}\n\n[base]\n{base}"


# (id, command, argv builder(tmp) -> list[str], exit code, words the error line must contain)
CASES: list[tuple[str, Callable[..., int], Callable[[Path], list[str]], int, tuple[str, ...]]] = [
    ("train unknown dataset", train_main, lambda t: ["--set", "dataset=imagenet"], 2,
     ("dataset", "mnist1d")),
    ("train unknown model", train_main, lambda t: ["--set", "student=vit"], 2,
     ("student", "cnn1d")),
    ("train temperature 0", train_main, lambda t: ["--temperature", "0"], 2, ("temperature",)),
    ("train negative epsilon", train_main, lambda t: ["--epsilon", "-1"], 2, ("epsilon", ">= 0")),
    ("train non-numeric --epsilon", train_main, lambda t: ["--epsilon", "abc"], 2,
     ("--epsilon", "abc", "see --help")),
    ("train unknown --set key", train_main, lambda t: ["--set", "lr_max=1"], 2,
     ("lr_max", "valid fields")),
    ("train image files missing", train_main,
     lambda t: ["--set", "dataset=svhn", "--set", f"data_root={t}", "--set", "teacher=resnet8",
                "--set", "student=resnet8"], 2, ("svhn", "download")),
    ("train --config missing", train_main,
     lambda t: ["--config", str(t / "best.json"), "--out", str(t / "o")], 2, ("best.json",)),
    ("train --config not JSON", train_main,
     lambda t: ["--config", str(_file(t)), "--out", str(t / "o")], 2, ("a-file", "JSON")),
    ("train --config of a search with no result", train_main,
     lambda t: ["--config", _json(t, '{"study": "s", "config": null}'), "--out", str(t / "o")],
     2, ("no configuration",)),
    ("train --config with a bad field", train_main,
     lambda t: ["--config", _json(t, '{"lr": -1}'), "--out", str(t / "o")], 2, ("lr",)),
    ("search --mlflow unusable", search_main,
     lambda t: ["--study", "smoke", "--mlflow", "nonsense-scheme://x", "--out", str(t / "o")], 2,
     ("--mlflow",)),
    ("search confirm teachers 0", search_main,
     lambda t: ["--study", "smoke", "--confirm-teachers", "0", "--out", str(t / "o")], 2,
     ("--confirm-teachers",)),
    ("search confirm under several teachers with one checkpoint", search_main,
     lambda t: ["--study", "eps_sweep", "--set", f"teacher_checkpoint={_file(t)}",
                "--out", str(t / "o")], 2, ("teacher_checkpoint", "--confirm-teachers 1")),
    ("search unknown study", search_main, lambda t: ["--study", "nope", "--out", str(t / "o")], 2,
     ("nope",)),
    ("search unknown space", search_main,
     lambda t: ["--study", _study(t, _good_study(space='"nope"')), "--out", str(t / "o")], 2,
     ("space", "nope")),
    ("search unknown sampler", search_main,
     lambda t: ["--study", _study(t, _good_study(sampler='"bayes"')), "--out", str(t / "o")], 2,
     ("sampler", "bayes")),
    ("search unknown pruner", search_main,
     lambda t: ["--study", _study(t, _good_study(pruner='"asha"')), "--out", str(t / "o")], 2,
     ("pruner", "asha")),
    ("search unknown backend", search_main,
     lambda t: ["--study", "smoke", "--backend", "dask", "--out", str(t / "o")], 2,
     ("backend", "dask")),
    ("search malformed TOML", search_main,
     lambda t: ["--study", _study(t, 'space = "eps"\ntrials = = 3\n'), "--out", str(t / "o")], 2,
     ("mine.toml", "line 2")),
    ("search trials 0", search_main,
     lambda t: ["--study", "smoke", "--trials", "0", "--out", str(t / "o")], 2, ("trials",)),
    ("search workers 0", search_main,
     lambda t: ["--study", "smoke", "--workers", "0", "--out", str(t / "o")], 2, ("workers",)),
    ("search batch 0", search_main,
     lambda t: ["--study", "smoke", "--batch", "0", "--out", str(t / "o")], 2, ("--batch",)),
    ("search batch under ray", search_main,
     lambda t: ["--study", "smoke", "--backend", "ray", "--batch", "2", "--out", str(t / "o")],
     2, ("--batch", "optuna")),
    ("search unknown --set key", search_main,
     lambda t: ["--study", "smoke", "--set", "nope=1", "--out", str(t / "o")], 2, ("nope",)),
    ("search unwritable --out", search_main,
     lambda t: ["--study", "smoke", "--out", str(_file(t) / "sub")], 2, ("a-file",)),
    ("search unreachable storage", search_main,
     lambda t: ["--study", "smoke", "--storage", "postgresql+psycopg2://u@127.0.0.1:9/db",
                "--out", str(t / "o")], 2, ("storage",)),
    ("search unreachable ray address", search_main,
     lambda t: ["--study", "smoke", "--backend", "ray", "--address", "127.0.0.1:9",
                "--out", str(t / "o")], 2, ("127.0.0.1:9",)),
    ("ablate unknown variant", ablate_main,
     lambda t: ["--variants", "no_grad,ce", "--out", str(t / "o"), *TINY], 2,
     ("no_grad", "no_grad_term")),
    ("ablate seeds 0", ablate_main,
     lambda t: ["--variants", "ce", "--seeds", "0", "--out", str(t / "o"), *TINY], 2,
     ("seeds",)),
    ("ablate teachers 0", ablate_main,
     lambda t: ["--variants", "ce", "--teachers", "0", "--out", str(t / "o"), *TINY], 2,
     ("--teachers",)),
    ("ablate several teachers with one checkpoint", ablate_main,
     lambda t: ["--variants", "ce", "--teachers", "2", "--set", f"teacher_checkpoint={_file(t)}",
                "--out", str(t / "o"), *TINY], 2, ("teacher_checkpoint", "--teachers")),
    ("ablate unknown --set key", ablate_main,
     lambda t: ["--variants", "ce", "--set", "nope=1", "--out", str(t / "o")], 2, ("nope",)),
    ("ablate from a study with no trials", ablate_main,
     lambda t: ["--variants", "ce", "--from-study", "smoke", "--out", str(t / "o"), *TINY], 2,
     ("smoke", "'dgkd-search --study smoke --out ", "/o' first")),
    ("ablate unwritable --out", ablate_main,
     lambda t: ["--variants", "ce", "--out", str(_file(t) / "sub"), *TINY], 2, ("a-file",)),
    ("ablate unknown study", ablate_main,
     lambda t: ["--variants", "ce", "--study", "nope", "--out", str(t / "o")], 2, ("nope",)),
]  # fmt: skip


def _json(tmp: Path, text: str) -> str:
    path = tmp / "given.json"
    path.write_text(text)
    return str(path)


def _file(tmp: Path) -> Path:
    """A regular file, so that a directory below it cannot be created (even as root)."""
    path = tmp / "a-file"
    path.write_text("not a directory")
    return path


@pytest.mark.parametrize(("command", "build", "code", "words"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_input_is_one_line_with_the_fix(
    command: Callable[..., int],
    build: Callable[[Path], list[str]],
    code: int,
    words: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = build(tmp_path)
    assert command(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])
    out = tmp_path / "o"
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), "half-written output"


def test_corrupt_teacher_cache_is_retrained_not_fatal(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import json

    from dgkd import teacher

    monkeypatch.setenv("DGKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(teacher, "_MEMO", {})
    assert train_main([*TINY, "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    files = list((tmp_path / "cache" / "teachers").glob("*.pt"))
    assert files
    for weights in files:
        weights.write_bytes(b"garbage")
    teacher._MEMO.clear()
    assert train_main([*TINY, "--json"]) == 0  # detected by its checksum and retrained
    assert "corrupt" in caplog.text
    again = json.loads(capsys.readouterr().out)["metrics"]
    assert {k: v for k, v in again.items() if k != "duration_s"} == {
        k: v for k, v in first["metrics"].items() if k != "duration_s"
    }
