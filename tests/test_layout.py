"""The package's shape: one-way imports in pipeline order, modules a student can read, tests that mirror them, the
notebook API, and the security rules every module keeps (no eval/exec, safe torch.load)."""
import ast
import re
import shutil
import subprocess
import sys

import pytest

import helpers
from helpers import config

PACKAGE = config.REPO_ROOT / "helpers"
SOURCES = {p.stem: p for p in sorted(PACKAGE.glob("*.py"))}


def package_imports(path) -> set[str]:
    """The helpers modules a file imports, at the top or inside functions (relative or absolute)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:                       # from .sft import …
                found.add(node.module.split(".")[0])
            elif node.level == 1:                                     # from . import sft
                found |= {a.name for a in node.names}
            elif node.module and node.module.startswith("helpers."):
                found.add(node.module.split(".")[1])
            elif node.module == "helpers":
                found |= {a.name for a in node.names if a.name in helpers.MODULES}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("helpers.")}
    return found


def test_every_module_is_listed_in_pipeline_order():
    assert set(helpers.MODULES) == set(SOURCES) - {"__init__", "__main__"}


def test_imports_run_one_way_down_the_pipeline():
    """A module imports only modules listed before it: lower stages never reach into higher ones, so no cycles."""
    for name in helpers.MODULES:
        rank = helpers.MODULES.index(name)
        upward = sorted(m for m in package_imports(SOURCES[name]) if helpers.MODULES.index(m) >= rank)
        assert upward == [], f"helpers/{name}.py imports {upward}, which come at or after it in the pipeline"


def test_the_import_check_can_fail(tmp_path):
    bad = tmp_path / "config.py"
    bad.write_text("from .rloo import run_rloo\n\ndef f():\n    from helpers.chat import ChatSession\n")
    assert package_imports(bad) == {"rloo", "chat"}


def test_modules_are_a_few_hundred_lines_and_say_what_they_may_import():
    for name in helpers.MODULES:
        text = SOURCES[name].read_text()
        assert len(text.splitlines()) <= 600, f"helpers/{name}.py has {len(text.splitlines())} lines"
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert "import" in doc.lower(), f"helpers/{name}.py's docstring does not say what it may import"


def test_tests_mirror_the_modules():
    tests = config.REPO_ROOT / "tests"
    missing = [m for m in helpers.MODULES if not (tests / f"test_{m}.py").exists()]
    assert missing == []


def test_the_notebook_api_has_no_star_imports_and_every_name_resolves():
    tree = ast.parse(SOURCES["__init__"].read_text())
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert imports and not any(a.name == "*" for n in imports for a in n.names)
    for node in imports:
        for alias in node.names:
            assert getattr(helpers, alias.name) is not None


def test_importing_the_package_changes_no_global_state():
    """No seeds set, no torch settings changed on import (a fresh interpreter, compared before/after)."""
    code = ("import random, torch; r, t = random.getstate(), torch.get_rng_state(); "
            "threads = torch.get_num_threads(); import helpers, helpers.cli; "
            "assert random.getstate() == r and torch.equal(torch.get_rng_state(), t); "
            "assert torch.get_num_threads() == threads; print('ok')")
    done = subprocess.run([sys.executable, "-c", code], cwd=config.REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.hostile
def test_helpers_never_calls_eval_or_exec():
    call = re.compile(r"(?<![\w.])(eval|exec)\s*\(")
    assert call.search("value = eval(text)") and call.search("exec (code)")          # the check can fail
    assert not call.search("model.eval()") and not call.search("evaluate(") and not call.search("never eval/exec")
    hits = [f"{path.name} line {text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for path in SOURCES.values() for text in [path.read_text()] for m in call.finditer(text)]
    assert hits == []


@pytest.mark.hostile
def test_torch_load_always_refuses_pickled_code():
    """Checkpoints are loaded with weights_only=True: a pickle cannot run code on load."""
    for path in SOURCES.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                flags = {k.arg: ast.unparse(k.value) for k in node.keywords}
                assert flags.get("weights_only") == "True", f"{path.name}: {ast.unparse(node)}"


def test_code_passes_the_linter():
    ruff = shutil.which("ruff", path=str(config.REPO_ROOT / ".venv" / "bin")) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed (requirements-dev.txt)")
    done = subprocess.run([ruff, "check", "helpers", "tests", "notebooks", "benchmarks"], cwd=config.REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
