"""The package's layers: data flows one way, and no module imports from a layer above its own.

The order below is the architecture (README, Layout). Every import counts, those inside
functions too: a back-edge fails with the two module names, and so does any cycle.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "s2vt"

# From the ground up. A module may import from its own layer and those below.
LAYERS = [
    ("runtime",),
    ("video",),
    ("data",),
    ("features",),
    ("decoding",),  # search over a model's encode/step/reorder_state: needs no model code
    ("models",),
    ("captioning",),
    ("evaluation",),
    ("training",),
    ("apps", "cli"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set:
    """The s2vt modules ``path`` imports (``from s2vt.a import b`` names s2vt.a.b when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("s2vt"):
            assert node.level == 0, f"{module_name(path)}: relative import; import s2vt.LAYER.MODULE"
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{module_name(path)}: relative import; import s2vt.LAYER.MODULE")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("s2vt")}
    return found - {module_name(path)}


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def layer_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ("__init__", "__main__"):
        return len(LAYERS)  # the package's face: `import s2vt`, `python -m s2vt`
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no declared layer; add its folder to LAYERS")


GRAPH = {m: imports(p) for m, p in MODULES.items()}


def test_every_module_is_in_a_layer():
    for m in MODULES:
        layer_of(m)
    top = {p.name for p in PKG.glob("*.py")}
    assert top == {"__init__.py", "__main__.py"}, f"modules outside any layer: {sorted(top)}"


def test_no_module_imports_from_a_higher_layer():
    back = sorted(f"{m} (layer {LAYERS[layer_of(m)][0]}) imports {d} (layer {LAYERS[layer_of(d)][0]})"
                  for m, deps in GRAPH.items() for d in deps
                  if m.count(".") and d != "s2vt" and layer_of(d) > layer_of(m))
    assert not back, "\n".join(back)


def find_cycle(graph: dict):
    state = {}

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                cycle = visit(d, stack + [d])
                if cycle:
                    return cycle
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m, [m])
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    graph = {m: {d for d in deps if d in MODULES and d != "s2vt"} for m, deps in GRAPH.items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_checks_can_fail():
    assert find_cycle({"a": {"b"}, "b": {"a"}}) in (["a", "b", "a"], ["b", "a", "b"])
    assert layer_of("s2vt.training.loop") > layer_of("s2vt.models.checkpoint")
