"""The README's examples run as written (against the test server instead of port 8700)."""

import re
import subprocess
import sys
from pathlib import Path

from tests.support.servers import Server

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_readme_python_example_runs(server: Server) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "the README lost its Python example"
    code = blocks[0].replace("http://127.0.0.1:8700", server.base)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[0], "the first answer is empty"
    assert "smollm2-135m" in result.stdout  # the model list printed at the end
    # Both answers end within the model's default max_tokens (256): without it a 135M model
    # at temperature 1.0 could ramble to the context's end, thousands of tokens.
    assert len(result.stdout) < 4000, result.stdout


def test_readme_yaml_example_is_a_valid_config(tmp_path: Path) -> None:
    block = re.search(r"```yaml\n(.*?)```", README, re.S)
    assert block
    path = tmp_path / "shipway.yaml"
    path.write_text(block.group(1))
    result = subprocess.run(
        [sys.executable, "-m", "shipway", "config", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
