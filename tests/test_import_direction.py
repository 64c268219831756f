"""The core is the bottom floor: no module under `ascend_adapt/` (the core folder) imports the plugin
packages `model_zoo`, `operators` or `om_convert` (installed as `ascend_adapt.model_zoo`, …) when it
is imported. Plugins import the core; the core reaches a plugin only inside a function (a lazy
import where that is the honest structure, e.g. a registry's loader) or under `if TYPE_CHECKING:`.

The check is an AST walk over every core module: the statements that run at import time are the
module body and, recursively, the bodies of module-level `if` / `try` / `with` / `for` / `while`
blocks and class bodies (not function bodies, not `if TYPE_CHECKING:`). Every `import` there, every
`from … import` (absolute or relative, resolved against the module's package) and every
`importlib.import_module("…")` / `__import__("…")` call with a literal name is resolved to the
module(s) it loads; one inside a plugin package is a violation, reported as `path:line: what`.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "ascend_adapt"
PLUGINS = ("model_zoo", "operators", "om_convert")


def _module_name(path: Path, root: Path) -> tuple[str, str]:
    """(module, package) dotted names of `path` inside the package folder `root` (named root.name)."""
    rel = path.relative_to(root).with_suffix("")
    parts = [root.name, *rel.parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def _is_plugin(dotted: str, core: str) -> bool:
    """Whether module `dotted` lies in a plugin package (as `core.<plugin>…` or a top-level `<plugin>…`)."""
    parts = dotted.split(".")
    if parts[0] == core:
        return len(parts) > 1 and parts[1] in PLUGINS
    return parts[0] in PLUGINS


def _resolve_from(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    if node.level - 1 > len(base) - 1:
        return node.module or ""  # beyond the top package: Python would refuse it; judge the name
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_nodes(body):
    """Every AST node that runs when the module is imported (see the module docstring)."""
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _expr_nodes(stmt.decorator_list + stmt.args.defaults + stmt.args.kw_defaults)
            continue
        if isinstance(stmt, ast.If) and _is_type_checking(stmt.test):
            yield from _import_time_nodes(stmt.orelse)
            continue
        if isinstance(stmt, ast.ClassDef):
            yield from _expr_nodes(stmt.decorator_list + stmt.bases)
            yield from _import_time_nodes(stmt.body)
            continue
        blocks = [getattr(stmt, f) for f in ("body", "orelse", "finalbody") if isinstance(getattr(stmt, f, None), list)]
        blocks += [h.body for h in getattr(stmt, "handlers", [])]
        blocks += [c.body for c in getattr(stmt, "cases", [])]
        if blocks:
            yield stmt
            heads = [getattr(stmt, f) for f in ("test", "iter", "subject") if getattr(stmt, f, None) is not None]
            heads += [i.context_expr for i in getattr(stmt, "items", [])]
            yield from _expr_nodes(heads)
            for b in blocks:
                yield from _import_time_nodes(b)
            continue
        yield from _expr_nodes([stmt])  # the statement itself first


def _expr_nodes(roots):
    """Nodes of expressions, not descending into lambdas (their bodies run later)."""
    stack = [r for r in roots if r is not None]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, ast.Lambda):
            continue
        stack.extend(ast.iter_child_nodes(n))


def _call_target(node: ast.Call) -> str | None:
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def upward_imports(path: Path, root: Path = CORE) -> list[str]:
    """Import-time imports of a plugin package in the module at `path` (inside package folder `root`),
    each as "path:line: statement"."""
    module, package = _module_name(path, root)
    core = root.name
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in _import_time_nodes(tree.body):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve_from(node, package)  # `from pkg import sub` loads pkg.sub when it is a module
            targets = [mod] if _is_plugin(mod, core) else [f"{mod}.{a.name}" for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call):
            t = _call_target(node)
            targets = [t] if t else []
        bad = sorted({t for t in targets if _is_plugin(t, core)})
        if bad:
            found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {module} imports {', '.join(bad)} "
                         f"at import time ({ast.unparse(node)[:120]})")
    return found


def test_the_core_never_imports_a_plugin_package_at_import_time():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 50, f"found only {len(files)} core modules under {CORE}"
    found = [v for f in files for v in upward_imports(f)]
    assert not found, ("the core (ascend_adapt/) must not import model_zoo / operators / om_convert at "
                       "module level; import inside the function that needs it, or move what the core "
                       "needs into the core:\n" + "\n".join(found))


def _write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def test_the_checker_finds_every_form_of_an_upward_import(tmp_path):
    core = tmp_path / "ascend_adapt"
    _write(core, "__init__.py", "")
    _write(core, "sub/__init__.py", "from .. import om_convert\n")
    bad = _write(core, "sub/bad.py", """\
        import numpy as np
        import ascend_adapt.model_zoo
        from ascend_adapt.operators.quant import ASCEND_QUANT_OPS
        from ascend_adapt import om_convert, errors
        from ..model_zoo.base import ADAPTERS
        from .. import operators
        try:
            import model_zoo
        except ImportError:
            pass
        class Late:
            from ascend_adapt.om_convert import atc
        X = __import__("importlib").import_module("ascend_adapt.model_zoo.llama")
        if True:
            from ascend_adapt.operators import registry
        """)
    good = _write(core, "sub/good.py", """\
        from typing import TYPE_CHECKING
        import typing
        from ascend_adapt.errors import ConfigError
        from ascend_adapt import spec, errors
        from .. import contract
        from .sibling import model_zoo_helper
        if TYPE_CHECKING:
            from ascend_adapt.model_zoo import Adapter
        if typing.TYPE_CHECKING:
            import ascend_adapt.om_convert
        LOADERS = ("ascend_adapt.model_zoo.llama",)
        def f():
            from ascend_adapt.model_zoo import ADAPTERS
            import operators
            return ADAPTERS
        class C:
            def m(self):
                from ..om_convert import atc
        g = lambda: __import__("ascend_adapt.operators")
        """)
    lines = upward_imports(bad, core)
    assert [int(v.split(":")[1]) for v in lines] == [2, 3, 4, 5, 6, 8, 12, 13, 15], "\n".join(lines)
    assert all(v.startswith("ascend_adapt/sub/bad.py:") and "ascend_adapt.sub.bad imports" in v for v in lines)
    assert "ascend_adapt.om_convert" in lines[2] and "errors" not in lines[2].split(" at import time")[0]
    assert upward_imports(good, core) == []
    init = upward_imports(core / "sub" / "__init__.py", core)
    assert len(init) == 1 and "ascend_adapt.sub imports ascend_adapt.om_convert" in init[0]


def test_core_facts_moved_from_a_plugin_are_one_definition():
    """The quant op names the simulator's cost model needs moved into the core; operators.quant
    re-exports the same objects (one definition, no copy that could drift)."""
    from ascend_adapt import quant
    from ascend_adapt.operators import quant as op_quant

    assert op_quant.ASCEND_QUANT_OPS is quant.ASCEND_QUANT_OPS
    assert op_quant.INT8_MATMUL_TAG is quant.INT8_MATMUL_TAG
