"""docs/architecture.md's map ("Where things live") names every module of src/rlhfkit under its
package, so the picture a reader starts from stays whole."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "rlhfkit"


def map_by_package() -> dict[str, str]:
    """The map's text by package ("" for the modules at the top of src/rlhfkit/)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    start = doc.index("```", doc.index("## Where things live"))
    end = doc.index("\ntests/", start)
    text: dict[str, str] = {}
    package = ""
    for line in doc[start:end].splitlines()[2:]:  # below the fence and `src/rlhfkit/`
        opens = re.match(r"  (\w+)/", line)
        if opens or re.match(r"  \S", line):
            package = opens.group(1) if opens else ""
        text[package] = text.get(package, "") + line + "\n"
    return text


def test_every_module_is_named_under_its_package():
    text = map_by_package()
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).parts
        package = parts[0] if len(parts) > 1 else ""
        if path.stem != "__init__" and not re.search(rf"\b{path.stem}\b", text.get(package, "")):
            missing.append("/".join(parts))
    assert not missing, f"not in docs/architecture.md's map: {missing}"
