"""The README is the front door: its first screen shows the two commands CI runs, its install lines
work on a CPU machine, its examples run, and every frame count says whether it counts video or
latent frames."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RESULTS = (ROOT / "docs" / "results.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def _commands(block: str) -> list[str]:
    """The shell commands of a code block, comments dropped."""
    return [line.split(" #")[0].strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _ci_commands() -> list[str]:
    return [line.strip() for line in CI.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_first_screen_shows_the_bench_and_the_test_command():
    first_screen = README.split("\n## ", 1)[0]
    blocks = _code_blocks(first_screen, "bash")
    assert blocks, "README's first screen (before the first '## ' heading) has no bash block"
    assert _commands(blocks[0]) == ['pip install ".[bench]" && python -m bench', 'pip install ".[test]" && pytest']
    assert "--index-url https://download.pytorch.org/whl/cpu" in first_screen


def test_ci_runs_both_first_screen_commands():
    ci = _ci_commands()
    assert 'python -m pip install ".[test,bench]"' in ci, "CI must install the extras the two commands install"
    assert "pytest" in ci, ".ci/run must run the test command"
    (bench,) = [line for line in ci if line.startswith("python -m bench ")]
    assert re.fullmatch(r'python -m bench --quick --out "\$\w+"', bench), f"CI's bench run must write outside bench/results: {bench!r}"
    assert "mktemp -d" in CI


def test_ci_runs_the_readme_test_command():
    commands = _commands(_code_blocks(_section("Run the tests"), "bash")[0])
    assert commands[-1] in _ci_commands(), f".ci/run must call README's test command {commands[-1]!r}"


def test_the_test_command_collects_every_test_folder():
    """pytest's default ``norecursedirs`` holds ``build``: ``pytest`` silently skipped tests/build."""
    from fnmatch import fnmatch

    tomllib = pytest.importorskip("tomllib")
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    pytest_default = ["*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}"]
    patterns = options.get("norecursedirs", pytest_default)
    folders = {path.parent for path in (ROOT / "tests").rglob("test_*.py")}
    skipped = [
        folder for folder in folders
        if any(fnmatch(part, pattern) for part in folder.relative_to(ROOT).parts for pattern in patterns)
    ]  # fmt: skip
    assert not skipped, f"pytest would not collect {sorted(map(str, skipped))} (norecursedirs {patterns})"


def test_install_section_has_a_cpu_torch_line_and_says_why_triton():
    install = _section("Install")
    commands = _commands(_code_blocks(install, "bash")[0])
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in commands
    prose = " ".join(install.split())
    for claim in ("triton** is not a dependency", "CPU interpreter", "static report", "`test` and `bench` extras"):
        assert claim in prose, f"README's Install section no longer says {claim!r}"


def test_pyproject_puts_triton_where_the_readme_says():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("triton")]
    for extra in ("test", "bench"):
        assert [d for d in project["optional-dependencies"][extra] if d.startswith("triton")], extra


def test_readme_is_short_and_its_lines_are_readable():
    """The front door: under 280 lines with the generated headline, none over 160 characters (the tables
    live in docs/results.md)."""
    lines = README.splitlines()
    assert len(lines) <= 280, f"README has {len(lines)} lines"
    long = [f"line {n}: {len(line)} characters" for n, line in enumerate(lines, 1) if len(line) > 160]
    assert not long, "\n".join(long)


def test_every_frame_count_says_video_or_latent():
    """The paper's VAE turns 16 video frames into 5 latent frames: 'frames' alone is ambiguous."""
    unnamed = [
        f"line {number}: {line.strip()}"
        for number, line in enumerate(README.splitlines(), 1)
        for match in re.finditer(r"(?<![\w.-])frames?\b", line, re.I)  # not --frames, .frames, keyframe, frames_per_latent
        if not re.search(r"\b(video|latent)\s+$", line[: match.start()], re.I)
    ]
    assert not unnamed, "say 'video frames' or 'latent frames':\n" + "\n".join(unnamed)


def test_readme_api_example_runs(capsys):
    (example,) = _code_blocks(_section("API"), "python")
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([1, 72, 2, 64])" in printed and "sdpa: available" in printed


def test_readme_model_example_runs_and_agrees_with_the_flops_table_in_the_results(capsys):
    (example,) = _code_blocks(_section("Model layer (`vin`)"), "python")
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch.Size([1, 40, 4, 8, 8])" in printed
    match = re.search(r"(\d+) latent frames: (\d+)% of full attention's FLOPs per step", printed)
    assert match, printed
    latent, percent = match.groups()
    rows = re.findall(rf"^\| (\d+) \| {latent} \| vin_context \|(?:[^|]*\|){{2}} (\d+)% \|", RESULTS, re.M)
    if not rows:
        pytest.skip(f"docs/results.md has no flops row for {latent} latent frames")
    assert {p for _, p in rows} == {percent}, f"the example prints {percent}% for {latent} latent frames, docs/results.md says {rows}"


def test_readme_diffusers_example_runs(capsys):
    pytest.importorskip("diffusers")
    (example,) = _code_blocks(_section("Diffusers video transformers (`vin.diffusers`)"), "python")
    exec(compile(example, "README.md", "exec"), {})
    assert "torch.Size([1, 16, 8, 4, 4]) torch.Size([1, 16, 25, 4, 4])" in capsys.readouterr().out
