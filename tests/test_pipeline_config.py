"""Profiles, overrides and fingerprints of the pipeline config."""

from __future__ import annotations

import pytest

from patchrec.contract import fingerprint
from patchrec.profiles import PROFILES, PROJECT_ROOT, load_pipeline


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_validates(name, tmp_path):
    cfg = load_pipeline(name, state_dir=tmp_path)
    assert cfg.data.out == tmp_path / "data" / cfg.dataset and cfg.data.raw.is_absolute()
    assert cfg.model.cache_dir == tmp_path / "models" and cfg.model_name == f"patchrec-{cfg.dataset}"
    assert cfg.val.split == "val" and cfg.test.split == "test"


def test_overrides_apply_and_typos_fail(tmp_path):
    cfg = load_pipeline("tiny", {"pft.lr": 0.01, "registry.margin": 0.5, "ppt": None}, tmp_path)
    assert cfg.pft.lr == 0.01 and cfg.registry.margin == 0.5 and cfg.ppt is None
    assert cfg.data.raw == PROJECT_ROOT / "examples" / "tiny" / "raw"
    with pytest.raises(ValueError, match=r"pft\.lrr"):
        load_pipeline("tiny", {"pft.lrr": 1}, tmp_path)
    with pytest.raises(ValueError, match="unknown profile 'nope'"):
        load_pipeline("nope")
    with pytest.raises(ValueError, match=r"registry\.metric"):
        load_pipeline("tiny", {"registry.metric": "ndcg@10"}, tmp_path)
    with pytest.raises(ValueError, match="layout"):
        load_pipeline("tiny", {"pft.layout": "mixed"}, tmp_path)


def test_state_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHREC_STATE", str(tmp_path / "s"))
    assert load_pipeline("tiny").state_dir == tmp_path / "s"


def test_fingerprint_is_stable_and_sensitive():
    a = load_pipeline("tiny").pft.model_dump(mode="json")
    assert fingerprint("pft", a, "data1") == fingerprint("pft", dict(reversed(list(a.items()))), "data1")
    assert fingerprint("pft", a, "data1") != fingerprint("pft", a, "data2")
    assert fingerprint("pft", a, "data1") != fingerprint("pft", {**a, "lr": 0.1}, "data1")


def test_the_flows_offer_every_profile():
    from typing import get_args

    from flows.pipeline import Profile
    from patchrec.profiles import PROFILES

    assert set(get_args(Profile)) == set(PROFILES)
    for name in PROFILES:  # every profile validates
        assert load_pipeline(name).profile == name
