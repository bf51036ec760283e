"""The design rules of issue 11, checked on the source: layering and one owner per compressor.

* Nothing under ``fedtrust/`` imports Flower (nor the app packages built on it).
* Outside ``fedtrust/compression/``, no module compares a compressor's name: the
  strategy, the client, the attacks, the experiments and the benchmarks ask the codec.
  (Tests may name compressors: they parametrize over them.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fedtrust.compression import codec_class, codec_names

ROOT = Path(__file__).resolve().parents[1]
APP_PACKAGES = ("flwr", "strategies", "clients", "experiments")


def sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if ".venv" not in p.parts)


def imported_modules(tree: ast.AST) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return out


@pytest.mark.parametrize("path", sources("fedtrust"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_flower(path: Path) -> None:
    bad = [m for m in imported_modules(ast.parse(path.read_text())) if m.split(".")[0] in APP_PACKAGES]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: fedtrust/ must stay free of Flower and the apps"


def compressor_words() -> tuple[set[str], set[str]]:
    """Names and families of the registered codecs: those always meant as compressors, and
    those that are common words too (``none``), which count only next to a compressor-ish name."""
    words = set(codec_names()) | {codec_class(n).family for n in codec_names()}
    ambiguous = {"none"}
    return words - ambiguous, words & ambiguous


def name_comparisons(path: Path) -> list[str]:
    """``x == "topk"``, ``x in ("none", "powersgd")``, ``case "topk"`` ... in one module."""
    text = path.read_text()
    tree = ast.parse(text)
    sure, ambiguous = compressor_words()
    found = []

    def constants(node: ast.AST) -> set[str]:
        return {n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)}

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            words = set().union(*(constants(o) for o in operands))
            source = (ast.get_source_segment(text, node) or "").lower()
            hits = words & sure
            if words & ambiguous and any(k in source for k in ("compress", "family", "codec", "spec", "algo")):
                hits |= words & ambiguous
            if hits:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.get_source_segment(text, node)}")
        elif isinstance(node, ast.match_case) and constants(node.pattern) & sure:
            found.append(f"{path.relative_to(ROOT)}:{node.pattern.lineno}: case {constants(node.pattern)}")
    return found


def test_no_module_outside_compression_compares_a_compressor_name() -> None:
    files = [p for p in sources("fedtrust", "strategies", "clients", "experiments", "bench")
             if "compression" not in p.relative_to(ROOT).parts[:2]]
    found = [hit for path in files for hit in name_comparisons(path)]
    assert not found, "ask the codec instead of comparing names:\n" + "\n".join(found)


def test_the_check_finds_a_comparison(tmp_path: Path) -> None:
    """The detector itself: it must catch the forms the rule forbids."""
    module = tmp_path / "bad.py"
    module.write_text('def f(cfg, spec):\n'
                      '    if cfg.compressor == "powersgd":\n        return 1\n'
                      '    if spec.get("compressor") != "none":\n        return 2\n'
                      '    if cfg.attack == "none":\n        return 3\n'
                      '    return cfg.family in ("sgd", "topk")\n')
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        found = name_comparisons(module)
    finally:
        ROOT = saved
    assert [h.split(":")[1] for h in found] == ["2", "4", "8"], found


def code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring left out."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    return (body[-1].end_lineno - body[0].lineno + 1) if body else 0


SHORT = ("strategies", "fedtrust/attacks/gradinv/api.py", "experiments/sweep.py")


def test_no_long_functions_in_the_strategy_the_attack_api_and_the_sweep() -> None:
    files = [p for entry in SHORT for p in ([ROOT / entry] if entry.endswith(".py") else sources(entry))]
    long = [f"{p.relative_to(ROOT)}:{n.lineno} {n.name}: {code_lines(n)} lines"
            for p in files for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and code_lines(n) > 60]
    assert not long, "split these (at most about 60 lines of code each):\n" + "\n".join(long)
