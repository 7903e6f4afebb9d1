"""What readers see on a forge: the committed notebook outputs show lessons, not the machine they ran on.

CI re-executes the notebooks small (nbval, nothing saved); these checks read the committed files:
every code cell that computes something has its output, and no output holds a stderr stream, a
warning or an absolute path of the machine that executed it.
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# A rooted path of two or more parts (/home/x/..., /tmp/abc/...) not inside a URL or a relative path.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.-]+/)+[\w.-]+")
WARNING = re.compile(r"\b\w*Warning\b|^W\d{4} |\bwarnings\.warn", re.M)


def _texts(output):
    """All the text of one output: streams, plain-text results, errors, HTML and Markdown."""
    parts = [output.get("text", "")]
    for mime in ("text/plain", "text/html", "text/markdown"):
        parts.append(output.get("data", {}).get(mime, ""))
    parts.extend(output.get("traceback", []))
    return "".join("".join(p) if isinstance(p, list) else p for p in parts)


def test_the_four_lessons_are_there():
    assert [nb.name for nb in NOTEBOOKS] == ["01_architecture.ipynb", "02_data.ipynb",
                                            "03_pretrain_multi_gpu.ipynb", "04_squad.ipynb"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_are_clean(notebook):
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    code = [c for c in cells if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    assert code, "no code cells"
    problems = []
    for number, cell in enumerate(code, 1):
        for output in cell.get("outputs", []):
            text = _texts(output)
            if output.get("name") == "stderr":
                problems.append(f"code cell {number}: a stderr stream: {text[:80]!r}")
            if output.get("output_type") == "error":
                problems.append(f"code cell {number}: an error: {output.get('ename')}")
            for match in ABSOLUTE_PATH.findall(text):
                problems.append(f"code cell {number}: an absolute path {match!r}")
            if WARNING.search(text):
                problems.append(f"code cell {number}: a warning: {WARNING.search(text).group(0)!r}")
    assert not problems, "\n".join(problems)
    # Executed for real: most cells show something (the rest only define or import).
    shown = sum(bool(c.get("outputs")) for c in code)
    assert shown >= len(code) // 2, f"only {shown} of {len(code)} code cells have outputs"
    assert all(c.get("execution_count") for c in code), "some code cells were never executed"
