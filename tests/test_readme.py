"""The README is the front door: its example runs and CI calls the test command it shows."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_ci_runs_the_readme_test_command():
    commands = [line for line in _code_blocks(_section("Run the tests"), "bash")[0].splitlines() if line.strip()]
    test_command = commands[-1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines, f".ci/run must call README's test command {test_command!r}"


def test_readme_api_example_runs(capsys):
    (example,) = _code_blocks(_section("API"), "python")
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([1, 72, 2, 64])" in printed and "cuda:" in printed


def test_readme_model_example_runs(capsys):
    (example,) = _code_blocks(_section("Model layer (`vin`)"), "python")
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([1, 40, 4, 8, 8])" in printed and "of full attention's FLOPs per step" in printed
