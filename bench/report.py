"""Render the newest benchmark results into README.md's results section.

``python -m bench.report [--results bench/results] [--readme README.md]`` replaces the text between
the README's ``<!-- bench-results:begin -->`` and ``<!-- bench-results:end -->`` markers with, per
suite, the table of the newest valid result file that has it (kernels and model: GPU runs only)
and links to its plots.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .schema import validate

BEGIN, END = "<!-- bench-results:begin -->", "<!-- bench-results:end -->"
TITLES = {"flops": "FLOPs: VIN vs full attention", "kernels": "Kernels vs the best baselines", "model": "Model: VIN vs full attention"}


def newest_results(directory: Path) -> dict[str, tuple[Path, dict]]:
    """Per suite, ``(path, result)`` of the newest valid result file holding it."""
    from .cli import SUITES  # noqa: F401  (suites register their markdown renderers there)

    best: dict[str, tuple[Path, dict]] = {}
    for path in sorted(directory.glob("*.json")):
        result = json.loads(path.read_text())
        if validate(result):
            continue
        gpu = result["environment"]["device_kind"] == "cuda"
        for suite in result["suites"]:
            if suite != "flops" and not gpu:
                continue  # CPU runs of the timed suites are smoke runs, not measurements
            if suite not in best or result["environment"]["timestamp"] > best[suite][1]["environment"]["timestamp"]:
                best[suite] = (path, result)
    return best


def render(results: dict[str, tuple[Path, dict]], readme_dir: Path) -> str:
    from .cli import SUITES

    if not results:
        return "No results yet: run `python -m bench`, then `python -m bench.report`."
    parts = []
    for suite in ("flops", "kernels", "model"):
        if suite not in results:
            continue
        path, result = results[suite]
        env = result["environment"]
        link = Path(os.path.relpath(path, readme_dir)).as_posix()
        parts.append(
            f"### {TITLES[suite]}\n\n{env['device']}, commit `{env['commit']}`, {env['timestamp'][:10]}; "
            f"`{env['command']}` ([raw results]({link})).\n\n{SUITES[suite].markdown(result['suites'][suite])}"
        )
        plot = path.with_name(f"{path.stem}-{suite}.png")
        if plot.exists():
            parts.append(f"![{suite}]({Path(os.path.relpath(plot, readme_dir)).as_posix()})")
    missing = [TITLES[s] for s in ("kernels", "model") if s not in results]
    if missing:
        parts.append(f"Not measured yet on a GPU: {'; '.join(missing)} (`bash bench/gpu_check.sh` on a GPU machine).")
    return "\n\n".join(parts)


def update_readme(readme: Path, results_dir: Path) -> bool:
    """Rewrite the marked section of ``readme``; True if it changed."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{readme} has no {BEGIN} ... {END} section")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    body = render(newest_results(results_dir), readme.parent)
    new = f"{head}{BEGIN}\n{body}\n{END}{tail}"
    readme.write_text(new)
    return new != text


def main(argv=None) -> int:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=root / "bench" / "results")
    parser.add_argument("--readme", type=Path, default=root / "README.md")
    args = parser.parse_args(argv)
    changed = update_readme(args.readme, args.results)
    print(f"{args.readme}: {'updated' if changed else 'unchanged'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
