"""The generic adapter's reference is complete in one place, twice in agreement: the README's table
(and recipes) and the module docstring of authproxy/upstreams/generic.py name every option the
parser knows, and every recipe in the README is a configuration the parser accepts."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import authproxy.upstreams.generic as generic_module
from authproxy.upstreams.generic_options import CAPTURE_KEYS, SCHEMA, parse_spec

README = Path(__file__).resolve().parents[2] / "README.md"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("### A new upstream by configuration alone")
    return text[start:text.index("## Forward auth", start)]


def test_every_option_is_in_the_readme_and_the_docstring() -> None:
    section, doc = _section(), generic_module.__doc__ or ""
    for table, keys in SCHEMA.items():
        for where, text in (("README", section), ("docstring", doc)):
            assert f"[{table}]" in text or f"[[{table}]]" in text, (where, table)
            for key in (*keys, *(CAPTURE_KEYS if table == "injects" else ())):
                assert re.search(rf"\b{re.escape(key)}\b", text), (where, table, key)


def test_every_readme_recipe_is_a_valid_configuration() -> None:
    blocks = re.findall(r"```toml\n(.*?)```", _section(), flags=re.DOTALL)
    sites = [site for block in blocks for site in tomllib.loads(block).get("sites", [])]
    assert len(sites) >= 5
    for site in sites:
        spec, problems = parse_spec(site["options"])
        assert problems == [] and spec is not None, (site["name"], problems)
