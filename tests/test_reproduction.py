"""docs/reproduction.md's parity table against the shipped recipes: every row marked "recipe"
names an rvq key and a value, and each recipe it names sets exactly that value (so the table
and the recipes cannot drift apart)."""

import re
from pathlib import Path

import pytest
import yaml

from rvq_cli.config import load_recipe
from rvq_cli.runs import flat_recipe

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reproduction.md"
GROUPS = {
    "vqvae": ["vqvae_euclidean_1024x32", "vqvae_cosine_1024x32", "vqvae_euclidean_8192x3", "vqvae_cosine_8192x3"],
    "vqvae_1024": ["vqvae_euclidean_1024x32", "vqvae_cosine_1024x32"],
    "vqvae_8192": ["vqvae_euclidean_8192x3", "vqvae_cosine_8192x3"],
    "vqvae_cos": ["vqvae_cosine_1024x32", "vqvae_cosine_8192x3"],
    "vqgan_ld": ["vqgan_f4", "vqgan_f8"],
    "vqgan_taming": ["vqgan_f16_imagenet", "vqgan_f16_faceshq"],
}


def parity_rows() -> list[dict]:
    text = DOC.read_text()
    table = text.split("## The parity table", 1)[1].split("\n### ", 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 7 or cells[0] in ("table", "---") or set(cells[0]) <= {"-"}:
            continue
        rows.append(dict(zip(("table", "upstream", "behaviour", "key", "value", "recipes", "status"), cells)))
    return rows


ROWS = parity_rows()
RECIPE_ROWS = [r for r in ROWS if r["status"] == "recipe"]


def test_the_table_is_there_and_rows_are_well_formed():
    assert len(ROWS) >= 50 and len(RECIPE_ROWS) >= 40
    for r in ROWS:
        assert r["status"].split(":")[0].split(" ")[0] in ("recipe", "override", "open", "differs"), r
        if r["status"] == "recipe":
            assert r["key"].startswith("`") and r["value"].startswith("`"), r


def _recipes(cell: str) -> list[str]:
    out = []
    for name in (n.strip() for n in cell.split(",")):
        out += GROUPS.get(name, [name])
    return out


@pytest.mark.parametrize("row", RECIPE_ROWS, ids=lambda r: f"{r['key'].strip('`')}={r['value'].strip('`')}")
def test_recipe_rows_hold_in_the_recipes(row):
    key, value = row["key"].strip("`"), yaml.safe_load(row["value"].strip("`"))
    names = _recipes(row["recipes"])
    assert names, row
    for name in names:
        path = ROOT / "recipes" / f"{name}.yaml"
        assert path.is_file(), name
        flat = flat_recipe(load_recipe(path, check_paths=False))
        assert key in flat, (name, key)
        got = flat[key]
        assert got == value or (isinstance(value, float) and got == pytest.approx(value)), (name, key, got, value)


def _karpathy_rows() -> list[dict]:
    """The parity rows of karpathy/deep-vector-quantization (a "same" row continues the one above)."""
    out, karpathy = [], False
    for r in ROWS:
        karpathy = karpathy if r["upstream"].startswith("same") else r["upstream"].startswith("karpathy")
        if karpathy:
            out.append(r)
    return out


def test_the_gumbel_line_on_the_page_sets_every_override_row_of_karpathys():
    """docs/reproduction.md writes the Gumbel VQ-VAE row as one command line; it validates, and
    gives every karpathy row marked override (or a default) its value."""
    lines = [line for line in DOC.read_text().splitlines()
             if line.startswith("rvq train recipes/") and "model.quantizer.gumbel_logits=linear" in line]
    assert len(lines) == 1, lines
    words = lines[0].split()
    flat = flat_recipe(load_recipe(ROOT / words[2], words[3:], check_paths=False))
    rows = [r for r in _karpathy_rows() if r["key"].startswith("`")]
    assert {r["key"].strip("`") for r in rows if r["status"].startswith("override")} >= {
        "model.quantizer.estimator", "model.quantizer.gumbel_logits", "model.quantizer.update",
        "model.quantizer.beta", "model.quantizer.kl_warmup_steps"}
    for r in rows:
        key, value = r["key"].strip("`"), yaml.safe_load(r["value"].strip("`"))
        assert flat[key] == value or flat[key] == pytest.approx(value), (key, flat[key], value)
