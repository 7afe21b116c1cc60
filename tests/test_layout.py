"""The layers: the library never imports the recipes, the scripts or the demo (they import it, not the reverse)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ("training", "scripts", "app", "app_logic", "benchmarks", "tests")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of what a module imports, relative imports resolved against its package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names.add(module)
    return names


def test_the_library_never_imports_training_scripts_or_the_demo():
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.split(".")[0] in OUTSIDE)
                 for p in (ROOT / "rocl_zoo").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_model_files_never_import_the_zoo_catalogue():
    """timm's direction: the model files own their configs and tags; the zoo reads them, never the reverse."""
    offenders = {p.name: sorted(m for m in imported_modules(p) if m in ("rocl_zoo.zoo", "rocl_zoo.hub"))
                 for p in (ROOT / "rocl_zoo" / "models").glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_check_sees_relative_absolute_and_function_level_imports():
    assert "rocl_zoo.data" in imported_modules(ROOT / "rocl_zoo" / "models" / "_cfg.py")  # from ..data import
    assert "rocl_zoo.models._cfg" in imported_modules(ROOT / "rocl_zoo" / "models" / "convnet.py")  # from ._cfg
    assert {"rocl_zoo.hub", "torch"} <= imported_modules(ROOT / "rocl_zoo" / "inference.py")  # in a function too
