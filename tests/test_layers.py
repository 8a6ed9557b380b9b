"""The house's rules, checked on the source: what lannode/core may import and read, what
the services may import of the API transport, and that nothing cites a document the
repository does not hold (docs/architecture.md has the map these rules come from)."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "lannode" / "core"
# I/O, concurrency and the clock stay out of the sans-IO core: time is an argument there
FORBIDDEN_IN_CORE = {"trio", "socket", "threading", "asyncio", "time", "select", "selectors", "subprocess"}
CLOCK_READS = {"now", "utcnow", "today"}  # datetime's ways to read the clock (it may convert a time it is given)


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_core_does_no_io_reads_no_clock_and_stands_on_nothing_above_it() -> None:
    offences = []
    for path in sorted(CORE.glob("*.py")):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in FORBIDDEN_IN_CORE:
                offences.append(f"{path.name} imports {name}")
            if top == "lannode" and not name.startswith("lannode.core"):
                offences.append(f"{path.name} imports {name}, above the core")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CLOCK_READS:
                offences.append(f"{path.name}:{node.lineno} reads the clock ({node.func.attr}())")
    assert offences == []


def test_the_services_reach_the_api_through_its_interface_not_its_transport() -> None:
    # the composition root builds the server
    allowed = {"daemon.py"}
    offences = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "lannode").rglob("*.py"))
        if path.parent.name != "net" and path.name not in allowed and "lannode.net.api_server" in imports_of(path)
    ]
    assert offences == []


def test_no_file_cites_a_document_outside_the_repository() -> None:
    outside = re.compile(r"\b(DESIGN|STYLE)\.md\b|\.\./shared\b")
    offences = []
    for path in sorted(ROOT.rglob("*")):
        if any(part in (".git", ".venv", "node_modules", "__pycache__", ".pytest_cache", "test-artifacts") for part in path.parts):
            continue
        if path.is_file() and path.suffix in (".py", ".md", ".toml", ".js", ".html", ".sh", ".cfg", ".txt") and path.name != "test_layers.py":
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if outside.search(line):
                    offences.append(f"{path.relative_to(ROOT)}:{n}")
    assert offences == []


def test_the_architecture_page_names_every_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", page, flags=re.S)))
    missing = []
    for top in ("lannode", "plugins", "ui", "sim"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in (".py", ".js", ".html", ".css") or "__pycache__" in path.parts:
                continue
            relative = path.relative_to(ROOT / top).as_posix()
            if relative not in page and path.name not in named and f"{path.parent.name}/" not in named and not any(fnmatch.fnmatch(path.name, n) for n in named if "*" in n):
                missing.append(f"{top}/{relative}")
    assert missing == []
