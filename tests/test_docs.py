"""Every file, folder and `module:function` that README.md and docs/*.md name exists (docs that lie are bugs)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("patchrec/", "flows/", "tasks/", "bench/", "tests/", "sql/", "docs/", "examples/", "deploy/", ".ci/")
SUFFIX = (".py", ".md", ".yaml", ".yml", ".json", ".sql", ".toml", ".png", ".csv")
CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
FUNC = re.compile(r"^([A-Za-z_][\w./]*?)(?:\.py)?:([A-Za-z_]\w*)$")
NODE = re.compile(r"^([\w./]+\.py)::(\w+)(?:\[.*\])?$")  # a pytest node id


def _deployments() -> set[str]:
    """`<flow>/<deployment>` names of prefect.yaml (they look like paths)."""
    import yaml

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    return {f"patchrec/{d['name']}" for d in spec.get("deployments", [])}


def _mentions(page: Path) -> list[tuple[str, str]]:
    """(kind, text): repository paths and `module:function` references of a page."""
    text = page.read_text(encoding="utf-8")
    out = []
    for token in CODE.findall(text):
        token = token.strip()
        if any(c in token for c in "<>*{} $=|") or token.startswith(("..", "~", ".state", "/")):
            continue
        if NODE.match(token):
            out.append(("test", token))
        elif token in _deployments():
            continue
        elif FUNC.match(token) and (token.startswith(TOP) or token.startswith(("patchrec.", "flows.", "tasks."))):
            out.append(("func", token))
        elif token.startswith(TOP) or (token.endswith(SUFFIX) and "/" in token and token.split("/")[0] in
                                       {t.rstrip("/") for t in TOP}):
            out.append(("path", token))
    for target in LINK.findall(text):
        if not target.startswith(("http://", "https://", "mailto:", "..")):
            out.append(("link", target))
    return out


def _module(name: str) -> str:
    return name.removesuffix(".py").replace("/", ".")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_named_paths_and_functions_exist(page):
    missing = []
    for kind, token in _mentions(page):
        if kind == "link":
            if not (page.parent / token).exists():
                missing.append(token)
        elif kind == "test":
            file, name = NODE.match(token).groups()  # type: ignore[union-attr]
            if not (ROOT / file).is_file() or not re.search(rf"^def {name}\(", (ROOT / file).read_text(), re.M):
                missing.append(token)
        elif kind == "path":
            if not (ROOT / token.rstrip("/")).exists():
                missing.append(token)
        else:
            mod, func = FUNC.match(token).groups()  # type: ignore[union-attr]
            try:
                if not hasattr(importlib.import_module(_module(mod)), func):
                    missing.append(token)
            except ImportError:
                missing.append(token)
    assert not missing, f"{page.name} names what does not exist: {missing}"


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 150
