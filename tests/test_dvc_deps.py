"""dvc.yaml lists exactly the project code each stage runs: its module and, transitively, every project
module it imports (found with ast, imports inside functions included). No stage module imports
another stage module (stages are leaves)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_MARKERS = {"pipeline/__init__.py", "pipeline/stages/__init__.py"}  # no code a stage runs


def module_file(name: str, root: Path = ROOT) -> str | None:
    """The file of project module ``name`` (dotted), relative to ``root``, or None if it is not one."""
    base = root / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path.relative_to(root).as_posix()
    return None


def imports_of(file: str, root: Path = ROOT) -> set[str]:
    """The project modules ``file`` imports (``pipeline.*``), as files."""
    tree = ast.parse((root / file).read_text())
    found: set[str] = set()
    package = file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")
                if not file.endswith("__init__.py"):
                    parts = parts[:-1]
                mod = ".".join(parts[:len(parts) - node.level + 1] + ([mod] if mod else []))
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] != "pipeline":
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # pipeline.x.y imports pipeline/x/__init__.py too
                f = module_file(".".join(parts[:i]), root)
                if f is not None:
                    found.add(f)
    return found


def closure(file: str, root: Path = ROOT) -> set[str]:
    todo, seen = [file], {file}
    while todo:
        for f in imports_of(todo.pop(), root) - seen:
            seen.add(f)
            todo.append(f)
    return seen - PACKAGE_MARKERS


def stages(root: Path = ROOT) -> dict[str, tuple[str, list[str]]]:
    """stage name -> (its module's file, its code deps under pipeline/) from dvc.yaml."""
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = {}
    for name, stage in spec.items():
        body = stage.get("do", stage)
        module = re.search(r"python -m (pipeline\.stages\.\w+)", body["cmd"]).group(1)
        deps = [d for d in body.get("deps", []) if isinstance(d, str) and d.startswith("pipeline/")]
        out[name] = (module_file(module, root), deps)
    return out


def problems(root: Path = ROOT) -> list[str]:
    found = []
    for name, (module, deps) in stages(root).items():
        needed = closure(module, root)
        covered = lambda f, deps=deps: any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)  # noqa: E731
        found += [f"{name}: runs {f} but dvc.yaml does not list it" for f in sorted(needed) if not covered(f)]
        found += [f"{name}: lists {d} but never imports it" for d in deps
                  if not any(f == d or f.startswith(d.rstrip("/") + "/") for f in needed)]
        found += [f"{name}: imports the stage module {f}" for f in sorted(needed)
                  if f.startswith("pipeline/stages/") and f != module]
    return found


def test_every_stage_lists_exactly_the_code_it_runs():
    assert problems() == []


def test_the_check_fails_when_a_dependency_is_dropped(tmp_path):
    import shutil

    shutil.copytree(ROOT / "pipeline", tmp_path / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    text = (ROOT / "dvc.yaml").read_text()
    assert "      - pipeline/metrics.py\n" in text
    (tmp_path / "dvc.yaml").write_text(text.replace("      - pipeline/metrics.py\n", "", 1))
    found = problems(tmp_path)
    assert any("runs pipeline/metrics.py but dvc.yaml does not list it" in p for p in found)
    line = "      - pipeline/report.py\n"
    more = text.replace(line, line + "      - pipeline/cli.py\n", 1)
    (tmp_path / "dvc.yaml").write_text(more)
    assert any("lists pipeline/cli.py but never imports it" in p for p in problems(tmp_path))


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "pipeline/stages").glob("*.py")
                                          if p.stem != "__init__"))
def test_stages_are_leaves(module):
    own = f"pipeline/stages/{module}.py"
    assert [f for f in closure(own) if f.startswith("pipeline/stages/") and f != own] == []
