"""``python -m bench`` (in a checkout) / ``python -m vin_bench`` / ``vin-bench``: run the suites this
machine supports and write the results.

Examples::

    python -m bench                      # the default run: the headline comparisons (about 3 minutes on 2 cores)
    python -m bench --full               # every shape, length and part of every suite
    python -m bench --suite kernels      # one suite (its default slice; with --full all of it)
    python -m bench --quick              # a smoke pass, written as <...>-quick.*
    python -m bench.report               # print the README results section from the newest full runs

Every run writes ``<device>-<date>-<time>-<commit>[-<suites>]-<default|full|quick>.{json,md}`` and
PNG plots, never over an existing file, under ``--out`` (default: ``bench/results/`` in a checkout,
else a per-user data folder, :func:`vin_bench.environment.default_results_dir`), and prints a short
summary (headline ratios and the paths).

A suite is a module of :mod:`vin_bench.suites` registered in :data:`SUITES` (one line each) with
``run(context) -> dict`` and ``markdown(result) -> str``. Optional: ``OPT_IN`` (a reason string: the
suite runs only when named with ``--suite``); ``files(result, out, stem)`` writes extra files
(images); ``supported(device)`` returns True when it can run on ``device`` or else a short reason
(``"needs a CUDA GPU"``; without it the suite runs anywhere); ``max_video_frames(device)`` bounds the
``--frames`` lengths it takes (None: it reads none); ``headline(result) -> list[str]`` gives the
summary lines; ``add_arguments(group)`` adds the suite's own flags (an argparse argument group
titled with the suite's name), read as ``context.options.<name>``. ``context.full`` (``--full``)
asks for everything; without it a suite runs its headline slice. Long steps report progress through
``context.progress`` (:mod:`vin_bench.progress`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import vin_kernels
from vin._argparse import ArgumentParser

from . import plots
from .ceilings import measure_ceilings
from .environment import default_results_dir, describe, load_average, result_stem
from .progress import Progress
from .schema import SCHEMA_VERSION, validate
from .suites import Context
from .suites import diffusers as diffusers_suite
from .suites import flops as flops_suite
from .suites import kernels as kernels_suite
from .suites import model as model_suite
from .suites import parallel as parallel_suite
from .suites import quality as quality_suite
from .suites import static as static_suite

# The suites, in run order (see the module docstring for what a suite module provides).
SUITES = {
    "flops": flops_suite,
    "kernels": kernels_suite,
    "model": model_suite,
    "parallel": parallel_suite,
    "quality": quality_suite,
    "static": static_suite,
    "diffusers": diffusers_suite,
}

DESCRIPTION = """\
Run the vin-kernels benchmark suites this machine supports and write one JSON
result, a markdown table and PNG plots (never over an earlier run's files).
The default run measures the headline comparisons (about 3 minutes on a quiet
2-core CPU); --full measures every shape, length and part."""
EXAMPLES = (
    ("{prog}", "the default run: the headline comparisons"),
    ("{prog} --full", "everything (every shape, length and part of every suite)"),
    ("{prog} --suite flops", "one suite"),
    ("{prog} --quick", "a smoke pass, written as <...>-quick.*"),
    ("{report}", "print the README results section from the newest runs"),
)


def _epilog(prog: str) -> str:
    report = "python -m bench.report" if prog == "python -m bench" else "python -m vin_bench.report"
    commands = [command.format(prog=prog, report=report) for command, _ in EXAMPLES]
    width = max(map(len, commands)) + 2
    return "examples:\n" + "\n".join(f"  {c.ljust(width)}{what}" for c, (_, what) in zip(commands, EXAMPLES))


def program_name(argv0: str | None = None, default: str = "python -m vin_bench") -> str:
    """How the user started the CLI: ``vin-bench`` (the console script), ``python -m bench`` (the
    checkout's shim, ``bench/__main__.py``) or ``python -m vin_bench`` (``vin_bench/__main__.py``)."""
    path = Path(sys.argv[0] if argv0 is None else argv0)
    if path.name == "__main__.py" and path.parent.name in ("bench", "vin_bench"):
        return f"python -m {path.parent.name}"
    return default if path.name in ("", "__main__.py", "-c") else path.name


DEFAULT_VIDEO_FRAMES = (64, 128, 256, 512, 1024)


def _frames(text: str) -> tuple[int, ...]:
    try:
        frames = tuple(int(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise ValueError(f"--frames takes comma-separated integers (video frames), got {text!r}") from None
    if not frames or min(frames) < 16:
        raise ValueError(f"--frames needs video lengths of at least 16 video frames, got {text!r}")
    return tuple(sorted(set(frames)))


def build_parser(prog: str) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=DESCRIPTION, epilog=_epilog(prog), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default="all", help=f"comma-separated: {', '.join(SUITES)} (default: all this machine supports but the opt-in ones)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="every shape, length and part of each suite (default: the headline slice)")
    size.add_argument("--quick", action="store_true", help="a smoke pass: few shapes and repeats; named <...>-quick, which bench.report skips")
    parser.add_argument(
        "--out", type=Path, default=None,
        help="output folder, created if missing (default: bench/results in a checkout, else a per-user data folder; "
        f"here: {default_results_dir()})",
    )  # fmt: skip
    parser.add_argument(
        "--frames", default=None,
        help="video lengths in VIDEO frames (the paper's VAE turns 16 into 5 latent frames), comma-separated "
        "(default: each suite's own: the flops suite 64,128,256,512,1024; on a CPU the kernels suite 256, "
        "the model suite 256,512; --full more)",
    )  # fmt: skip
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--full-matrix", action="store_true",
        help="--full, and the static suite compiles its whole matrix: every kernel option x head dim x dtype x arch "
        "(--full: the default matrix; default run: a headline slice)",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {vin_kernels.__version__}")
    for name, suite in SUITES.items():
        if (add_arguments := getattr(suite, "add_arguments", None)) is not None:
            add_arguments(parser.add_argument_group(f"{name} suite"))
    return parser


def _device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def parse_args(argv=None, prog: str | None = None):
    """The parsed flags, every one checked (one-line error, exit code 2) before any work starts."""
    parser = build_parser(prog or program_name())
    args = parser.parse_args(argv)
    names = list(SUITES) if args.suite == "all" else [s.strip() for s in args.suite.split(",")]
    unknown = [s for s in names if s not in SUITES]
    if unknown or not names:
        parser.error(f"--suite: unknown suite(s) {unknown}; choose from {list(SUITES)}")
    args.suites = names
    if args.full_matrix and args.quick:
        parser.error("--full-matrix: not with --quick (it implies --full)")
    args.full = args.full or args.full_matrix
    if args.frames is not None:
        try:
            args.frames = _frames(args.frames)
        except ValueError as err:
            parser.error(str(err))
        device = _device()
        for name in names:
            limit = getattr(SUITES[name], "max_video_frames", lambda device: None)(device)
            if limit is not None and max(args.frames) > limit:
                parser.error(
                    f"--frames {max(args.frames)}: the {name} suite takes at most {limit} video frames on this "
                    f"{device.type} machine (longer runs would not finish in reasonable time); pick shorter "
                    "lengths or other suites (--suite)"
                )
    return args


def unsupported_reason(name: str, device: torch.device) -> str | None:
    """Why suite ``name`` cannot run on ``device``, or None when it can: the suite module's
    ``supported(device)`` (True, or a reason); a module without ``supported`` runs anywhere."""
    supported = getattr(SUITES[name], "supported", None)
    verdict = True if supported is None else supported(device)
    if verdict is True:
        return None
    return verdict if isinstance(verdict, str) and verdict else f"not supported on {device.type}"


def output_problem(out: Path) -> str | None:
    """Why results cannot be written under ``out``, or None when they can (creates ``out`` if missing)."""
    if out.exists() and not out.is_dir():
        return "exists and is not a directory"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".vin-bench-write-test-"):
            pass
    except OSError as err:
        return f"cannot write there: {err.strerror or err}"
    return None


def run_kind(result: dict) -> str:
    """``quick``, ``full`` or ``default``: how much of each suite a result's run measured."""
    return "quick" if result.get("quick") else "full" if result.get("full") else "default"


def main(argv=None, prog: str | None = None) -> int:
    prog = prog or program_name()
    args = parse_args(argv, prog)
    out = args.out if args.out is not None else default_results_dir()
    if problem := output_problem(out):
        flag = "--out" if args.out is not None else "the default results folder (choose one with --out)"
        print(f"{prog}: error: {flag} {out}: {problem}", file=sys.stderr)
        return 2
    device = _device()
    suites = []
    for name in args.suites:
        if args.suite == "all" and getattr(SUITES[name], "OPT_IN", None):
            print(f"skipping the {name} suite (opt-in: --suite {name}): {SUITES[name].OPT_IN}", file=sys.stderr)
            continue
        reason = unsupported_reason(name, device)
        if reason is None:
            suites.append(name)
        elif args.suite != "all":
            print(f"{prog}: error: the {name} suite cannot run on this {device.type} machine: {reason}", file=sys.stderr)
            return 2
        else:
            print(f"skipping the {name} suite: {reason}", file=sys.stderr)
    if not suites:
        print(f"{prog}: error: no suite can run on this {device.type} machine", file=sys.stderr)
        return 2
    started = time.perf_counter()
    env = describe([*prog.split(), *(argv if argv is not None else sys.argv[1:])])
    kind = "quick" if args.quick else "full" if args.full else "default"
    print(f"{prog}: {kind} run of {', '.join(suites)} on {env['device']}; results go to {out}", file=sys.stderr)
    ctx = Context(
        device=device, quick=args.quick, video_frames=args.frames or DEFAULT_VIDEO_FRAMES,
        frames_given=args.frames is not None, full_matrix=args.full_matrix, options=args, progress=Progress(),
    )  # fmt: skip
    ctx.ceilings = measure_ceilings(device)
    result = {"schema": SCHEMA_VERSION, "environment": env, "ceilings": ctx.ceilings, "quick": args.quick, "full": args.full,
              "suites": {}, "suite_runs": {}}  # fmt: skip
    for name in suites:
        load_before, start = load_average(), time.perf_counter()
        print(f"running the {name} suite (load average {_load(load_before)})", file=sys.stderr)
        result["suites"][name] = SUITES[name].run(ctx)
        seconds, load_after = time.perf_counter() - start, load_average()
        result["suite_runs"][name] = {"seconds": round(seconds, 1), "load_average_before": load_before, "load_average_after": load_after}
        print(f"  the {name} suite took {seconds:.0f} s (load average {_load(load_after)})", file=sys.stderr)
    result["seconds"] = round(time.perf_counter() - started, 1)
    problems = validate(result)
    if problems:
        print("the result does not match the schema:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    try:
        written = write(result, out, plots_too=not args.no_plots, suites=None if args.suite == "all" else suites)
    except OSError as err:
        print(f"{prog}: error: writing the results under {out} failed: {err}", file=sys.stderr)
        return 1
    print(summary(result, written))
    return 0


def _load(load: list[float] | None) -> str:
    return "unknown" if load is None else f"{load[0]:.2f}"


def reserve(out: Path, stem: str) -> Path:
    """Create ``<out>/<stem>.json`` (exclusively: never over an existing file); ``<stem>-2.json``, ...
    when that name is taken. Returns the created (empty) file."""
    for n in range(1, 1000):
        path = out / (f"{stem}.json" if n == 1 else f"{stem}-{n}.json")
        try:
            path.open("x").close()
        except FileExistsError:
            continue
        if not path.with_suffix(".md").exists():
            return path
        path.unlink()  # an older run's table carries this name: take the next one
    raise FileExistsError(f"{out}: no free name for {stem}")


def write(result: dict, out: Path, plots_too: bool = True, suites: list[str] | None = None) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>-<suite>.png`` (suites with a plot) under ``out``,
    never over an existing file (:func:`reserve`). ``<stem>`` (:func:`result_stem`) holds the time of
    day, ``suites`` (a run of named suites) and the kind of run. Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = reserve(out, result_stem(result["environment"], run_kind(result), suites))
    stem = json_path.stem
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    written = [json_path]
    sections = [markdown_header(result)]
    for name, body in result["suites"].items():
        sections.append(f"## {name}\n\n{_run_line(result, name)}{SUITES[name].markdown(body)}")
        if plots_too and (path := plots.plot(name, body, out / f"{stem}-{name}.png")) is not None:
            sections.append(f"![{name}]({path.name})")
            written.append(path)
        if (files := getattr(SUITES[name], "files", None)) is not None:  # a suite's own extra files (images)
            for path in files(body, out, f"{stem}-{name}"):
                sections.append(f"![{path.stem}]({path.name})")
                written.append(path)
    md_path = out / f"{stem}.md"
    md_path.write_text("\n\n".join(sections) + "\n")
    written.insert(1, md_path)
    return written


def _run_line(result: dict, name: str) -> str:
    run = result.get("suite_runs", {}).get(name)
    if not run:
        return ""
    before, after = run["load_average_before"], run["load_average_after"]
    load = f", load average {_load(before)} → {_load(after)}" if before and after else ""
    return f"Measured in {run['seconds']:.0f} s{load}.\n\n"


def summary(result: dict, written: list[Path]) -> str:
    """What the run printed at its end: per suite its headline lines and time, then the files."""
    lines = [f"vin-kernels benchmark, {run_kind(result)} run, {result['seconds']:.0f} s on {result['environment']['device']}:"]
    for name, body in result["suites"].items():
        seconds = result["suite_runs"][name]["seconds"]
        heads = getattr(SUITES[name], "headline", lambda body: [])(body)
        lines.append(f"  {name} ({seconds:.0f} s)" + (": " + heads[0] if heads else ""))
        lines += [f"    {line}" for line in heads[1:]]
    if not result.get("full") and not result.get("quick"):
        lines.append("  (the default run: the headline slice of each suite; --full measures every shape, length and part)")
    lines.append(f"results: {written[0]}")
    lines.append(f"tables:  {written[1]}")
    if written[2:]:
        lines.append(f"plots:   {', '.join(p.name for p in written[2:])}")
    return "\n".join(lines)


def markdown_header(result: dict) -> str:
    env, ceilings = result["environment"], result["ceilings"]
    commit = env["commit"] or f"none (vin-kernels {env['vin_kernels']})"
    line = f"{env['device']} · torch {env['torch']} · triton {env['triton']} · CUDA {env['cuda']} · driver {env['driver']} · commit {commit} · {env['timestamp']}"
    if "cpu_model" in env:
        line += f"\n\nCPU: {env['cpu_model']}, {env['cpus']} cores usable, {env['threads']} torch threads, nice {env['nice']}."
    if ceilings:
        line += f"\n\nMeasured ceilings: bf16 matmul {ceilings['bf16_matmul_tflops']:.0f} TFLOP/s, device copy {ceilings['copy_gbps']:.0f} GB/s."
    kind = {"quick": " (--quick)", "full": " (--full)", "default": ""}[run_kind(result)]
    took = f" Whole run: {result['seconds']:.0f} s." if "seconds" in result else ""
    return f"# vin-kernels benchmark{kind}\n\n{line}\n\nCommand: `{env['command']}`.{took}"
