"""DESIGN.md's layers, checked on the imports themselves: arrows point down only.

``cli`` -> ``commands`` -> export / serve -> callbacks / models / data / inference / reports ->
``nn`` -> torch;
``nn`` and ``io`` import nothing of the project above them; a model never imports a data
source and a data source never a model; no command imports ``cli``.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "audio_cls"

#: What each part of the package may import from the project (besides itself).
ALLOWED = {
    "extras": set(),
    "io": {"extras"},
    "nn": {"extras"},
    # class-name embeddings from a sentence-transformers text model
    "text": {"extras"},
    "data": {"io", "extras"},
    "inference": {"data", "io", "extras"},
    "reports": {"inference", "extras"},
    "models": {"nn", "inference", "text", "extras"},
    "callbacks": {"inference", "reports", "nn", "extras"},
    # the exporter and the server use the inference core, never a Trainer
    "export": {"models", "inference", "nn", "extras"},
    "serve": {"models", "inference", "data", "io", "nn", "extras"},
    # the Parquet layout of embeddings, written by `embed` and read by `boost`
    "embeddings": {"extras"},
    # LightGBM on embeddings: a Lightning-free core that `boost` and `cv` call
    "boost": {"inference", "reports", "embeddings", "extras"},
    # soft and hard labels from a checkpoint: a Lightning-free core that `label`, `classify
    # --labels` and `pseudolabel` call
    "labelling": {"models", "inference", "data", "text", "extras"},
    "commands": {
        "callbacks",
        "models",
        "data",
        "inference",
        "reports",
        "nn",
        "io",
        "extras",
        "export",
        "serve",
        "boost",
        "embeddings",
        "labelling",
        "text",
    },
    "cli": {"commands", "data", "io", "models", "nn", "extras"},
}


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else ""


def _project_imports(path: Path) -> set[str]:
    """Top-level parts of ``audio_cls`` that ``path`` imports (at any depth of the code)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "audio_cls" and len(parts) > 1:
                found.add(parts[1])
    return found


FILES = sorted(p for p in PACKAGE.rglob("*.py") if _part(p))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    part = _part(path)
    wrong = _project_imports(path) - ALLOWED[part] - {part}
    assert not wrong, f"{path.relative_to(PACKAGE)} ({part}) imports {sorted(wrong)}"


def test_models_and_data_sources_do_not_know_each_other():
    for path in (PACKAGE / "models").rglob("*.py"):
        assert "data" not in _project_imports(path), path
    for path in (PACKAGE / "data").rglob("*.py"):
        assert "models" not in _project_imports(path), path


def test_every_part_is_known():
    assert {_part(p) for p in FILES} <= set(ALLOWED)
