"""The layer rules that import-linter cannot see (scripts/lint.sh runs import-linter and ruff):
the library loads without Ray or vLLM, the CLI without vLLM, no module imports another module's
private names, and every import deferred into a function says why."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("phi4ray", "actors", "jobs")


def _modules(package: str) -> list[str]:
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for p in (ROOT / package).rglob("*.py"))


def _sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, path.read_text()


def test_the_library_imports_without_ray_or_vllm():
    code = ("import importlib, sys\n"
            f"for m in {_modules('phi4ray')!r}: importlib.import_module(m)\n"
            "print(sorted(k for k in ('ray', 'vllm', 'actors', 'jobs') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_the_cli_starts_without_loading_vllm():
    code = "import sys, jobs.cli; print('vllm' in sys.modules, 'ray.serve.llm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "False False"


def test_no_module_imports_another_modules_private_names():
    found = []
    for path, text in _sources():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []


def function_local_imports(text: str) -> list[tuple[int, bool]]:
    """(line, says why) for every import inside a function: a `#` comment on the import's own
    lines, or on the line above its run of consecutive import lines."""
    lines = text.splitlines()
    out = []
    for fn in ast.walk(ast.parse(text)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                own = lines[node.lineno - 1:node.end_lineno]
                first = node.lineno - 1
                while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
                    first -= 1  # the run of import lines this one belongs to
                block = lines[max(first - 1, 0):node.end_lineno]
                out.append((node.lineno, any("#" in line for line in own + block)))
    return out


def test_every_deferred_import_says_why():
    missing = [f"{path.relative_to(ROOT)}:{line}" for path, text in _sources()
               for line, why in function_local_imports(text) if not why]
    assert missing == []


def test_the_deferred_import_check_can_fail():
    text = "def f():\n    import json\n    return json\n\ndef g():\n    # deferred: heavy\n    import ray\n    import ray.data\n"
    assert function_local_imports(text) == [(2, False), (7, True), (8, True)]
