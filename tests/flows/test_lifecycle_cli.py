"""`patchrec model` / `recommend` / `pipeline` on a registered tiny model: output and one-line errors."""

from __future__ import annotations

import json

import pytest

from patchrec.cli import main

pytestmark = pytest.mark.slow  # whole pipelines through the CLI


def test_model_list_and_recommend(tiny_state, capsys):
    state, _ = tiny_state
    assert main(["model", "list", "--name", "patchrec-tiny", "--state", str(state)]) == 0
    out = capsys.readouterr().out
    assert "champion" in out and "val_ndcg_10=" in out
    assert main(["recommend", "--model", "models:/patchrec-tiny@champion", "--history", "m01,m02", "--top-k", "3",
                 "--json", "--state", str(state)]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(row["item_keys"]) == 3 and len(row["titles"]) == 3


def test_lifecycle_errors_are_one_line(tiny_state, capsys):
    state, _ = tiny_state
    code = main(["recommend", "--model", "models:/patchrec-tiny@champion", "--history", "m01,nope",
                 "--state", str(state)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown item key(s) ['nope']" in err and "Traceback" not in err
    assert main(["model", "list", "--name", "patchrec-none", "--state", str(state)]) == 2
    assert "no registered model named 'patchrec-none'" in capsys.readouterr().err
    assert main(["pipeline", "full", "--profile", "tiny", "--set", "pft.lrr=1", "--state", str(state)]) == 2
    assert "pft.lrr" in capsys.readouterr().err


def test_hostile_model_names_are_refused_in_one_line(tiny_state, capsys):
    state, _ = tiny_state
    for name in ("a'b", "../../../tmp/evil", ".hidden", "x" * 200):
        assert main(["model", "list", "--name", name, "--state", str(state)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "invalid model name" in err and "Traceback" not in err
    assert main(["pipeline", "nightly", "--profile", "tiny", "--set", "registry.name=../../../tmp/evil",
                 "--state", str(state)]) == 2
    assert "registry.name" in capsys.readouterr().err
