"""The house rules a reader relies on: no import circle in ``anomaly``, the anomaly decision
written in one module, no test scaffolding in the wheel, and a README map of every module."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import setuptools

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``anomaly`` modules it imports (at the top or inside a function)."""
    modules = {_module_name(p): p for p in (ROOT / "anomaly").rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_anomaly_package_has_no_import_circle():
    graph = import_graph()
    assert "anomaly.stream.service" in graph and graph["anomaly.stream.service"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_anomaly_decision_is_written_in_one_module():
    """``grep -rn "> .*threshold" anomaly/`` finds only ``anomaly/bundle/decision.py``."""
    pattern = re.compile(r"> .*threshold")
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "anomaly").rglob("*"))
        if path.is_file() and path.suffix in (".py", ".json", ".html")
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line)
    ]
    assert hits and all(h.startswith("anomaly/bundle/decision.py:") for h in hits), hits


def test_the_wheel_holds_no_test_scaffolding():
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    find = find["packages"]["find"]
    packages = setuptools.find_packages(
        str(ROOT), include=find["include"], exclude=find.get("exclude", ())
    )
    assert "anomaly" in packages and "detectors" in packages
    assert not [p for p in packages if p.split(".")[0] in ("testsupport", "tests", "bench")]
    assert not [p for p in packages if "testing" in p.split(".")], packages


def test_the_readme_layout_names_every_module_of_stream_and_every_folder():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    for path in sorted((ROOT / "anomaly" / "stream").glob("*.py")):
        if path.name != "__init__.py":
            assert f"`{path.name}`" in layout, path.name
    for folder in sorted(p for p in (ROOT / "anomaly").iterdir() if (p / "__init__.py").exists()):
        assert f"`anomaly/{folder.name}/`" in layout, folder.name
    assert "`testsupport/`" in layout
