"""The documentation's results point at files that are in the repository."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# docs/results/... anywhere; results/... as a link relative to docs/
RESULT_PATH = re.compile(r"(?<![\w/.])((?:docs/)?results/[\w./-]*)")
# The sweep's generated sections name the JSON that the same run of the sweep writes beside them.
GENERATED = re.compile(r"<!-- BEGIN generated.*?<!-- END generated[^>]*-->", re.S)


def referenced_results(doc: Path) -> set[Path]:
    text = GENERATED.sub("", doc.read_text(encoding="utf-8"))
    paths = set()
    for match in RESULT_PATH.finditer(text):
        ref = match.group(1).rstrip(".,:;")
        # a placeholder (PRESET, NAME) or a pattern (results/*.json, r{18,50}-97.json) names no one file
        if re.search(r"[A-Z]{4,}", ref) or text[match.end():match.end() + 1] in ("{", "*"):
            continue
        if ref.startswith("docs/"):
            paths.add(REPO / ref)
        elif doc.parent.name == "docs":  # a relative link inside docs/
            paths.add(doc.parent / ref)
    return paths


def test_every_results_path_the_docs_name_exists():
    docs = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    named = {doc.name: referenced_results(doc) for doc in docs}
    assert sum(len(p) for p in named.values()) > 15  # the pattern still finds what the docs cite
    missing = sorted(f"{doc}: {p.relative_to(REPO)}" for doc, paths in named.items() for p in paths
                     if not p.exists())
    assert not missing, "\n".join(missing)
