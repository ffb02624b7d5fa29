"""The `patchrec` command: help on every subcommand, JSON output, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from patchrec.cli import build_parser, main


def _subcommands(parser, prefix=()):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommands(sub, (*prefix, name))


@pytest.mark.parametrize("cmd", [(), *list(_subcommands(build_parser()))])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*cmd, "--help"])
    assert exit_.value.code == 0
    assert "usage: patchrec" in capsys.readouterr().out


def test_prepare_json(ml100k_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "patchrec.cli", "data", "prepare", "--format", "movielens-100k", "--raw",
         str(ml100k_dir), "--out", str(tmp_path / "out"), "--json", "--min-rating", "4",
         "--min-history", "1"],
        capture_output=True, text=True, check=True,
    )
    s = json.loads(proc.stdout)
    assert s["rows_read"] == 36 and s["rows_filtered"] == 18
    assert s["rows_read"] == s["rows_accepted"] + s["rows_quarantined"] + s["rows_deduplicated"] + s["rows_filtered"]
    assert set(s["samples"]) == {"train", "val", "test"}


def test_missing_path_is_one_line_error(tmp_path, capsys):
    code = main(["data", "prepare", "--format", "movielens-100k", "--raw", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_unreadable_file_is_one_line_error(ml100k_dir, tmp_path, capsys, monkeypatch):
    import os

    target = ml100k_dir / "u.data"
    if os.geteuid() == 0:  # root reads anything: make the read fail as it does for other users
        import patchrec.data.ingest as ingest

        def denied(path, *a, **k):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(ingest, "file_digest", denied)
    else:
        target.chmod(0)
    code = main(["data", "prepare", "--format", "movielens-100k", "--raw", str(ml100k_dir), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Permission denied" in err and "u.data" in err
    assert "Traceback" not in err


def test_train_and_evaluate_flags_come_from_the_configs(capsys):
    """Every scalar TrainConfig / EvalConfig field is a flag with the field's help, and its range holds."""
    from patchrec.cli import build_parser
    from patchrec.config import EvalConfig, TrainConfig

    parser = build_parser()
    sub = {a.dest: a for a in parser._subparsers._group_actions[0].choices["train"]._actions}
    for name in ("stage", "layout", "head", "max_grad_norm", "lora_dropout", "keep_best", "negatives", "bf16"):
        assert name in sub and name in TrainConfig.model_fields
    assert sub["head"].choices == ["generative", "scoring"] and "ranking head" in sub["head"].help
    ev = {a.dest for a in parser._subparsers._group_actions[0].choices["evaluate"]._actions}
    assert {"num_beams", "top_k", "mask_history", "length_penalty"} <= ev <= set(EvalConfig.model_fields) | {
        "help", "data", "run", "out", "json", "nproc_per_node", "nnodes", "rdzv_endpoint"}
    code = main(["train", "--data", "d", "--out", "o", "--stage", "pft", "--layout", "item", "--max-grad-norm", "-1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["patchrec: error: invalid TrainConfig: max_grad_norm: Input should be greater than 0 "
                                 "(got -1.0)"]
