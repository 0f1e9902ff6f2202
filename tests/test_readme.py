"""The README's set-up commands are what CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readmes_test_command_in_a_fresh_environment():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up and the two commands\n\n```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci  # verbatim
    assert ci.index(commands[1]) > max(i for i, line in enumerate(ci) if "venv/bin/activate" in line)
    assert any(line.startswith("python3 -m venv") for line in ci) and "mktemp -d" in "\n".join(ci)
