"""Every reference to METHODS / TOOLCHAIN / RESULTS sections in the sources resolves to a section of docs/, and no
source cites a document that is not in the repository."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("METHODS", "TOOLCHAIN", "RESULTS")
SOURCES = [p for d in ("fastbayes", "kernels", "csrc", "tests", "benchmarks", "examples", "tools", ".ci")
           for p in sorted((ROOT / d).rglob("*")) if p.suffix in {".py", ".h", ".cuh", ".cu", ".cpp", ".sh", ""}
           and p.is_file() and "__pycache__" not in p.parts and "results" not in p.parts]
SOURCES += [ROOT / "README.md", ROOT / "docs" / "RESULTS.md"]
# "METHODS.md §2.2–§2.4", "METHODS §0.2/§0.4", "RESULTS §2": the document, then one or more section numbers
REF = re.compile(r"\b(METHODS|TOOLCHAIN|RESULTS|ANCHORS)(?:\.md)?((?:\s*(?:,|/|–|-|and)?\s*§\d+(?:\.\d+)?)+)")


def sections(doc: str) -> set[str]:
    """Section numbers of docs/DOC.md: '## 2.' -> '2', '### 2.3' -> '2.3'."""
    text = (ROOT / "docs" / f"{doc}.md").read_text()
    return {m.group(1).rstrip(".") for m in re.finditer(r"^#{2,4} (\d+(?:\.\d+)?)\.?\s", text, re.M)}


def references():
    for path in SOURCES:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for m in REF.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            for num in re.findall(r"§(\d+(?:\.\d+)?)", m.group(2)):
                yield f"{path.relative_to(ROOT)}:{line}", m.group(1), num


def test_sources_were_scanned():
    refs = list(references())
    assert len(refs) > 40 and {doc for _, doc, _ in refs} >= {"METHODS", "RESULTS", "TOOLCHAIN"}


@pytest.mark.parametrize("doc", DOCS)
def test_every_section_reference_resolves(doc):
    have = sections(doc)
    assert have, f"docs/{doc}.md has no numbered sections"
    missing = [f"{where}: {doc} §{num}" for where, d, num in references() if d == doc and num not in have]
    assert not missing, "references to sections that do not exist:\n" + "\n".join(missing)


def test_no_reference_to_documents_outside_the_repository():
    bad = [f"{where}: {d} §{num}" for where, d, num in references() if d == "ANCHORS"]
    assert not bad, "ANCHORS.md is not in the repository:\n" + "\n".join(bad)
