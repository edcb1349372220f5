"""The README's Python snippets run as written, and its quick start is what CI runs."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_snippet_runs(i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets may write files
    exec(compile(SNIPPETS[i], f"README.md snippet {i}", "exec"), {})


def test_quick_start_has_two_commands_and_ci_reads_them():
    block = README.split("<!-- quickstart -->")[1].split("<!-- /quickstart -->")[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("```")]
    assert len(commands) == 2
    assert "rnnkern demo" in commands[0] and "pytest" in commands[1]
    assert "<!-- quickstart -->" in (ROOT / ".ci" / "run").read_text()
