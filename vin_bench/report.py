"""The README's results section, rendered from the newest full benchmark runs.

``python -m bench.report`` prints the section; ``python -m bench.report --readme`` writes it into
README.md between the ``<!-- bench-results:begin -->`` and ``<!-- bench-results:end -->`` markers
(``--readme PATH`` for another file; ``--results DIR`` reads other results than bench/results).
Printing is the default so that running the report never modifies a tracked file unasked.

Per suite, the section holds the table of the newest valid result file that has the suite, and
links to its plots. ``--quick`` runs are never used: they are smoke runs with few shapes and repeats.
A GPU run is preferred over a CPU run of the same suite (the kernels are GPU kernels); a CPU run is
shown while no GPU has run the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .schema import validate

BEGIN, END = "<!-- bench-results:begin -->", "<!-- bench-results:end -->"
TITLES = {
    "flops": "FLOPs: VIN vs full attention",
    "kernels": "Kernels vs the best baselines",
    "model": "Model: VIN vs full attention",
    "parallel": "Chunk-parallel sampling: bytes moved and speed-up",
    "static": "Static report: the compiled GPU code",
    "quality": "The method at toy scale: the paper's ablation",
}
ROOT = Path(__file__).resolve().parents[1]


def _rank(result: dict) -> tuple[bool, str]:
    """Sort key of a result: GPU runs above CPU runs, then newer above older."""
    env = result["environment"]
    return env["device_kind"] == "cuda", env["timestamp"]


def newest_results(directory: Path) -> dict[str, tuple[Path, dict]]:
    """Per suite, ``(path, result)`` of the result file to show: the newest valid full (not
    ``--quick``) run holding the suite, a GPU run before any CPU run."""
    best: dict[str, tuple[Path, dict]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if validate(result) or result.get("quick"):
            continue
        for suite in result["suites"]:
            if suite not in best or _rank(result) > _rank(best[suite][1]):
                best[suite] = (path, result)
    return best


def render(results: dict[str, tuple[Path, dict]], readme_dir: Path) -> str:
    """The markdown of the results section; links are relative to ``readme_dir``."""
    from .cli import SUITES

    if not results:
        return "No results yet: run `python -m bench`, then `python -m bench.report --readme`."
    parts = []
    for suite in SUITES:
        if suite not in results:
            continue
        path, result = results[suite]
        env = result["environment"]
        link = Path(os.path.relpath(path, readme_dir)).as_posix()
        parts.append(
            f"### {TITLES.get(suite, suite)}\n\n{env['device']}, commit `{env['commit']}`, {env['timestamp'][:10]}; "
            f"`{env['command']}` ([raw results]({link})).\n\n{getattr(SUITES[suite], 'readme_markdown', SUITES[suite].markdown)(result['suites'][suite])}"
        )
        for plot in (path.with_name(f"{path.stem}-{suite}.png"), path.with_name(f"{path.stem}-{suite}-strip.png")):
            if plot.exists():
                parts.append(f"![{plot.stem}]({Path(os.path.relpath(plot, readme_dir)).as_posix()})")
    missing = [TITLES.get(s, s) for s in SUITES if s not in results]
    if missing:
        parts.append(f"Not measured yet: {'; '.join(missing)} (`python -m bench`; on a GPU machine `bash bench/gpu_check.sh`).")
    return "\n\n".join(parts)


def replace_section(text: str, body: str, name: str = "README") -> str:
    """``text`` with the part between :data:`BEGIN` and :data:`END` replaced by ``body``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"{name} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{body}\n{END}{tail}"


def update_readme(readme: Path, results_dir: Path) -> bool:
    """Rewrite the marked section of ``readme``; True if it changed."""
    text = readme.read_text()
    new = replace_section(text, render(newest_results(results_dir), readme.parent), str(readme))
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Render the README's results section from the newest full (not --quick) benchmark runs. "
        "Prints it; --readme writes it into README.md.",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results", help="folder of result files (default: bench/results)")
    parser.add_argument(
        "--readme", type=Path, nargs="?", const=ROOT / "README.md", default=None,
        help="write the section into this README (default with no path: the project's README.md) instead of printing it",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.exit(2, f"{parser.prog}: error: --results {args.results}: not a directory\n")
    if args.readme is None:
        print(render(newest_results(args.results), ROOT))
        return 0
    try:
        changed = update_readme(args.readme, args.results)
    except (OSError, ValueError) as err:
        parser.exit(2, f"{parser.prog}: error: --readme {args.readme}: {err}\n")
    print(f"{args.readme}: {'updated' if changed else 'unchanged'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
