"""The package's shape: stage folders, no import circle, a command line that starts light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "camcli"
STAGES = ("cli", "runs", "models", "methods", "io", "pictures", "report")
HEAVY = (
    "torch", "torchvision", "timm", "zennit", "numpy", "PIL", "cv2", "tqdm", "scipy", "skimage",
    "matplotlib",
)  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_at_load(path: Path) -> set[str]:
    """camcli modules a module imports when it is loaded (not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # if TYPE_CHECKING: ...
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("camcli"):
            found.add(node.module)
            for alias in node.names:  # from camcli.models import own
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("camcli"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_at_load(path) & set(modules) for name, path in modules.items()}


def test_modules_live_in_stage_folders():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "api.py"], top
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(STAGES)
    for stage in STAGES:
        assert (PACKAGE / stage / "__init__.py").exists(), stage


def test_no_import_circle_even_through_function_level_imports():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}

    def every_import(path: Path) -> set[str]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                found.add(node.module)
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        found.add(f"{node.module}.{alias.name}")
        return found

    edges = {name: every_import(path) - {name} for name, path in modules.items()}
    # a package's __init__ is imported by its submodules' import machinery: ignore those
    # edges (a submodule importing its own package's light constants is no circle)
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name)


def test_lower_stages_do_not_import_the_command_line():
    for name, targets in graph().items():
        if name.startswith(("camcli.cli", "camcli.__main__")):
            continue
        assert not [t for t in targets if t.startswith("camcli.cli")], name


def test_package_inits_are_light():
    """Sub-package __init__ files hold docstrings and constants only (the CLI reads them)."""
    for stage in STAGES:
        if stage == "cli":
            continue
        tree = ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8"))
        imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        assert not imports, stage


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["explain", "--help"],
        ["features", "--help"],
        ["compare", "--help"],
        ["layers", "--help"],
        ["models", "--help"],
        ["report", "--help"],
        ["evaluate", "--help"],
        ["explain", "--no-such-option"],
        ["evaluate", "--metrics", "nonsense", "x"],
    ],
)
def test_help_and_version_import_no_torch(args: list[str]):
    code = (
        "import sys, json\n"
        "from camcli.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'code': code, 'heavy': heavy}), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    verdict = json.loads(done.stderr.strip().splitlines()[-1])
    assert verdict["heavy"] == [], verdict
    assert verdict["code"] in (0, 2, None)
    if "--help" in args or "--version" in args:
        assert done.stdout.strip()


def test_the_ray_engines_cpu_tasks_and_the_readers_import_no_torch():
    """Ray's decoding and writing workers import these modules: they must start fast."""
    code = (
        "import sys, json\n"
        "import camcli.runs.ray_tasks, camcli.io.images, camcli.io.storage, camcli.io.write\n"
        "import camcli.models.preprocessing\n"
        "print(json.dumps([m for m in ('torch', 'torchvision', 'timm', 'zennit', 'ray') "
        "if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout) == []
