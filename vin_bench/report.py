"""The results pages, rendered from the newest benchmark runs.

``python -m bench.report`` (in a checkout; ``python -m vin_bench.report`` anywhere) prints the
tables; ``--write`` writes them into docs/results.md between the ``<!-- bench-results:begin -->`` and
``<!-- bench-results:end -->`` markers, and each suite's headline lines (its ``headline(result)``,
what a run prints at its end) into README.md between ``<!-- bench-headline:begin -->`` and
``<!-- bench-headline:end -->`` (``--tables PATH`` / ``--readme PATH`` write other files;
``--results DIR`` reads other results than the default folder,
:func:`vin_bench.environment.default_results_dir`). Printing is the default so that running the
report never modifies a tracked file unasked.

Per suite, the section holds the table of the newest valid result file that has the suite (sections
may come from different files), and links to its plots. ``--quick`` runs are never used: they are
smoke runs with few shapes and repeats. A GPU run is preferred over a CPU run of the same suite (the
kernels are GPU kernels); a CPU run is shown while no GPU has run the suite. Of a ``--full`` and a
default run of the same commit, the ``--full`` run is shown (it holds every shape of the default run).
"""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from pathlib import Path

from vin._argparse import ArgumentParser

from .environment import checkout_root, default_results_dir
from .schema import validate

BEGIN, END = "<!-- bench-results:begin -->", "<!-- bench-results:end -->"
HEADLINE_BEGIN, HEADLINE_END = "<!-- bench-headline:begin -->", "<!-- bench-headline:end -->"
WIDTH = 110  # README lines stay well under 160 characters
TITLES = {
    "flops": "FLOPs: VIN vs full attention",
    "kernels": "Kernels vs full attention and the best baselines",
    "model": "Model: VIN vs full attention",
    "parallel": "Chunk-parallel sampling: bytes moved and speed-up",
    "static": "Static report: the compiled GPU code",
    "quality": "The method at toy scale: the paper's ablation",
    "diffusers": "What chunked attention buys a Wan model",
}
def _coverage(result: dict, suite: str):
    """The suite's ``coverage(body)`` of a result (how much of its matrix the run measured), 0 without one."""
    from .cli import SUITES

    try:
        return getattr(SUITES[suite], "coverage", lambda body: 0)(result["suites"][suite])
    except (KeyError, TypeError, ValueError):
        return 0


def _better(new: dict, old: dict, suite: str | None = None) -> bool:
    """Whether result ``new`` is shown instead of ``old`` (both hold ``suite``): a GPU run over a CPU
    run; then the run of wider coverage where the suite defines one (the static suite: its full matrix
    over a slice); of two runs of the same commit a ``--full`` run over a default one; else the newer run."""
    new_env, old_env = new["environment"], old["environment"]
    new_gpu, old_gpu = new_env["device_kind"] == "cuda", old_env["device_kind"] == "cuda"
    if new_gpu != old_gpu:
        return new_gpu
    if suite is not None and _coverage(new, suite) != _coverage(old, suite):
        return _coverage(new, suite) > _coverage(old, suite)
    if new_env["commit"] and new_env["commit"] == old_env["commit"] and bool(new.get("full")) != bool(old.get("full")):
        return bool(new.get("full"))
    return new_env["timestamp"] > old_env["timestamp"]


def newest_results(directory: Path) -> dict[str, tuple[Path, dict]]:
    """Per suite, ``(path, result)`` of the result file to show (:func:`_better`): the newest valid run
    holding the suite that is not ``--quick``."""
    best: dict[str, tuple[Path, dict]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if validate(result) or result.get("quick"):
            continue
        for suite in result["suites"]:
            if suite not in best or _better(result, best[suite][1], suite):
                best[suite] = (path, result)
    return best


def provenance(path: Path, result: dict, suite: str, readme_dir: Path) -> str:
    """The line above a section: device, commit, date, command, link, and how it was measured (CPU
    model, threads, nice level, the suite's time and the load average before and after it)."""
    env = result["environment"]
    link = Path(os.path.relpath(path, readme_dir)).as_posix()
    commit = f"commit `{env['commit']}`" if env["commit"] else f"vin-kernels {env['vin_kernels']} (no git commit)"
    line = f"{env['device']}, {commit}, {env['timestamp'][:10]}; `{env['command']}` ([raw results]({link}))."
    details = []
    if env.get("cpu_model"):
        details.append(f"{env['cpu_model']}, {env['threads']} torch threads, nice {env['nice']}")
    run = result.get("suite_runs", {}).get(suite)
    if run:
        details.append(f"{run['seconds']:.0f} s")
        before, after = run["load_average_before"], run["load_average_after"]
        if before and after:
            details.append(f"load average {before[0]:.2f} → {after[0]:.2f} (1 min)")
    return line + (f" Measured on {'; '.join(details)}." if details else "")


def render(results: dict[str, tuple[Path, dict]], readme_dir: Path) -> str:
    """The markdown of the results section; links are relative to ``readme_dir``."""
    from .cli import SUITES

    if not results:
        return "No results yet: run `python -m bench`, then `python -m bench.report --write`."
    parts = []
    for suite in SUITES:
        if suite not in results:
            continue
        path, result = results[suite]
        try:
            table = getattr(SUITES[suite], "readme_markdown", SUITES[suite].markdown)(result["suites"][suite])
        except (KeyError, TypeError, ValueError) as err:  # a result written by older code, in a layout the tables no longer read
            table = (
                f"*Not shown: this run's {suite} result has a layout the current tables cannot read "
                f"({type(err).__name__}: {err}); run `python -m bench --suite {suite}` again.*"
            )
            print(f"warning: {path}: the {suite} section cannot be rendered: {type(err).__name__}: {err}", file=sys.stderr)
        parts.append(f"### {TITLES.get(suite, suite)}\n\n{provenance(path, result, suite, readme_dir)}\n\n{table}")
        for plot in (path.with_name(f"{path.stem}-{suite}.png"), path.with_name(f"{path.stem}-{suite}-strip.png")):
            if plot.exists():
                parts.append(f"![{plot.stem}]({Path(os.path.relpath(plot, readme_dir)).as_posix()})")
    missing = [TITLES.get(s, s) for s in SUITES if s not in results]
    if missing:
        parts.append(f"Not measured yet: {'; '.join(missing)} (`python -m bench`; on a GPU machine `bash bench/gpu_check.sh`).")
    return "\n\n".join(parts)


def _anchor(title: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def render_headline(results: dict[str, tuple[Path, dict]], readme_dir: Path, tables: Path) -> str:
    """README's short results: per suite, where and when it ran and its ``headline`` lines, linked to
    its tables in ``tables``; lines wrapped at :data:`WIDTH` characters."""
    from .cli import SUITES

    if not results:
        return "No results yet: run `python -m bench`, then `python -m bench.report --write`."
    link = Path(os.path.relpath(tables, readme_dir)).as_posix()
    bullets = []
    for suite in SUITES:
        if suite not in results:
            continue
        path, result = results[suite]
        env, title = result["environment"], TITLES.get(suite, suite)
        try:
            lines = getattr(SUITES[suite], "headline", lambda body: [])(result["suites"][suite])
        except (KeyError, TypeError, ValueError):  # an older result layout: the tables page says so
            lines = []
        where = f"{env['device'].split(' (')[0]}, `{env['commit'] or env['vin_kernels']}`, {env['timestamp'][:10]}"
        text = f"**{title}** ({where}, [tables]({link}#{_anchor(title)})): " + ("; ".join(lines) if lines else "see the tables")
        bullets.append(textwrap.fill(text, WIDTH, initial_indent="- ", subsequent_indent="  ", break_on_hyphens=False))
    return "\n".join(bullets)


def replace_section(text: str, body: str, name: str = "README", markers: tuple[str, str] = (BEGIN, END)) -> str:
    """``text`` with the part between the two ``markers`` (default :data:`BEGIN`, :data:`END`) replaced by ``body``."""
    begin, end = markers
    if begin not in text or end not in text:
        raise ValueError(f"{name} has no {begin} ... {end} section")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def update(tables: Path, readme: Path, results_dir: Path) -> list[Path]:
    """Rewrite the tables in ``tables`` and the headline in ``readme`` (both checked before either is
    written); returns the files that changed."""
    results = newest_results(results_dir)
    pages = [
        (tables, render(results, tables.parent), (BEGIN, END)),
        (readme, render_headline(results, readme.parent, tables), (HEADLINE_BEGIN, HEADLINE_END)),
    ]
    texts = [(path, path.read_text()) for path, _, _ in pages]
    new = [replace_section(text, body, str(path), markers) for (path, text), (_, body, markers) in zip(texts, pages)]
    changed = [path for (path, text), updated in zip(texts, new) if updated != text]
    for (path, text), updated in zip(texts, new):
        if updated != text:
            path.write_text(updated)
    return changed


def program_name(argv0: str | None = None) -> str:
    """``python -m bench.report`` (the checkout's shim) or ``python -m vin_bench.report``."""
    path = Path(sys.argv[0] if argv0 is None else argv0)
    return "python -m bench.report" if path.name == "report.py" and path.parent.name == "bench" else "python -m vin_bench.report"


def main(argv=None, prog: str | None = None) -> int:
    parser = ArgumentParser(
        prog=prog or program_name(),
        description="Render the results pages from the newest (not --quick) benchmark runs. Prints the tables; "
        "--write writes them into docs/results.md and the headline into README.md.",
    )
    results, root = default_results_dir(), checkout_root() or Path.cwd()
    parser.add_argument("--results", type=Path, default=results, help=f"folder of result files (default: {results})")
    parser.add_argument("--write", action="store_true", help="write the tables and the headline instead of printing")
    parser.add_argument("--tables", type=Path, default=root / "docs" / "results.md", help="with --write: the tables' file (default: %(default)s)")
    parser.add_argument("--readme", type=Path, default=root / "README.md", help="with --write: the headline's file (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.results.is_dir():
        parser.exit(2, f"{parser.prog}: error: --results {args.results}: not a directory\n")
    if not args.write:
        print(render(newest_results(args.results), root))
        return 0
    try:
        changed = update(args.tables, args.readme, args.results)
    except OSError as err:
        parser.exit(2, f"{parser.prog}: error: {err.filename}: {err.strerror or err}\n")
    except ValueError as err:  # a file without its markers (replace_section names it)
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    for path in (args.tables, args.readme):
        print(f"{path}: {'updated' if path in changed else 'unchanged'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
