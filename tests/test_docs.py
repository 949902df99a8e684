"""The design document the code cites is in the repository, and every citation names one of its sections."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"


def test_design_doc_exists_with_the_contracts():
    text = DESIGN.read_text()
    for heading in ("ChunkLayout: all index math in one place", "Operations and their contracts", "Backends and dispatch", "Numerics"):
        assert f"## {heading}" in text, heading


def test_code_cites_only_sections_that_exist():
    headings = [line.lstrip("#").strip() for line in DESIGN.read_text().splitlines() if line.startswith("#")]
    sources = [p for p in ROOT.rglob("*.py") if ".git" not in p.parts and "build" not in p.parts and p != Path(__file__)]
    citations = []
    for path in sources:
        text = path.read_text(errors="replace")
        assert "DESIGN.md" not in text, f"{path.relative_to(ROOT)} cites DESIGN.md, which is not in the repository"
        citations += [(path, m.group(1)) for m in re.finditer(r"docs/design\.md, \"?([A-Z][A-Za-z ]+)", text)]
    assert citations, "no code cites docs/design.md"
    for path, section in citations:
        assert any(h.startswith(section.strip()) for h in headings), f"{path.relative_to(ROOT)} cites missing section {section!r}"
