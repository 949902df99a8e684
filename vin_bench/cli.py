"""``python -m bench`` / ``vin-bench``: run the suites this machine supports and write the results.

Examples::

    python -m bench                      # every suite the machine supports
    python -m bench --suite kernels      # one suite
    python -m bench --quick              # a fast pass, written as <device>-<date>-<commit>-quick.*
    python -m bench.report               # print the README results section from the newest full runs

A suite is a module of :mod:`vin_bench.suites` registered in :data:`SUITES` (one line each) with
``run(context) -> dict`` and ``markdown(result) -> str``; a suite with an ``OPT_IN`` reason string
runs only when named with ``--suite``, ``files(result, out, stem)`` may write extra files (images);
it may define ``supported(device)``,
returning True when it can run on ``device`` or else a short reason (``"needs a CUDA GPU"``). A suite
without ``supported`` runs on any device. A suite's own flags come from its ``add_arguments(group)``
(an argparse argument group titled with the suite's name); it reads them as ``context.options.<name>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import vin_kernels

from . import plots
from .ceilings import measure_ceilings
from .environment import describe, result_stem
from .schema import SCHEMA_VERSION, validate
from .suites import Context
from .suites import flops as flops_suite
from .suites import kernels as kernels_suite
from .suites import model as model_suite
from .suites import parallel as parallel_suite
from .suites import quality as quality_suite
from .suites import diffusers as diffusers_suite
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
result, a markdown table and PNG plots."""
EXAMPLES = (
    ("{prog}", "every suite this machine supports"),
    ("{prog} --suite flops", "one suite"),
    ("{prog} --quick", "a fast pass, written as <device>-<date>-<commit>-quick.*"),
    ("python -m bench.report", "print the README results section from the newest full runs"),
)


def _epilog(prog: str) -> str:
    commands = [command.format(prog=prog) for command, _ in EXAMPLES]
    width = max(map(len, commands)) + 2
    return "examples:\n" + "\n".join(f"  {c.ljust(width)}{what}" for c, (_, what) in zip(commands, EXAMPLES))


def program_name(argv0: str | None = None) -> str:
    """How the user started the CLI: ``vin-bench`` for the console script, ``python -m bench`` for
    the module (whose ``sys.argv[0]`` is the path of ``bench/__main__.py``)."""
    name = Path(sys.argv[0] if argv0 is None else argv0).name
    return "python -m bench" if name in ("", "__main__.py", "-c") else name


DEFAULT_VIDEO_FRAMES = (64, 128, 256, 512, 1024)


def _frames(text: str) -> tuple[int, ...]:
    try:
        frames = tuple(int(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frames takes comma-separated integers, got {text!r}") from None
    if not frames or min(frames) < 16:
        raise argparse.ArgumentTypeError(f"--frames needs video lengths of at least 16 video frames, got {text!r}")
    return frames


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=DESCRIPTION, epilog=_epilog(prog),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--suite", default="all", help=f"comma-separated: {', '.join(SUITES)} (default: all this machine supports)")
    parser.add_argument("--quick", action="store_true", help="few shapes and repeats; results named <...>-quick, which bench.report skips")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output folder, created if missing (default: bench/results)")
    parser.add_argument(
        "--frames", type=_frames, default=None,
        help="video lengths in video frames, not latent frames (default: 64,128,256,512,1024; "
        "the CPU kernels and model suites take those up to 512 unless --frames is given)",
    )  # fmt: skip
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--full-matrix", action="store_true",
        help="static suite: every Triton kernel option x head dim x {bf16, fp16, fp32} x {sm_90, sm_80} (default: a stated subset)",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {vin_kernels.__version__}")
    for name, suite in SUITES.items():
        if (add_arguments := getattr(suite, "add_arguments", None)) is not None:
            add_arguments(parser.add_argument_group(f"{name} suite"))
    return parser


def parse_args(argv=None, prog: str | None = None) -> argparse.Namespace:
    parser = build_parser(prog or program_name())
    args = parser.parse_args(argv)
    names = list(SUITES) if args.suite == "all" else [s.strip() for s in args.suite.split(",")]
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        parser.error(f"--suite: unknown suite(s) {unknown}; choose from {list(SUITES)}")
    args.suites = names
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


def _progress():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return lambda iterable, **_: iterable
    return lambda iterable, desc="": tqdm(iterable, desc=desc, leave=False)


def main(argv=None, prog: str | None = None) -> int:
    prog = prog or program_name()
    args = parse_args(argv, prog)
    if problem := output_problem(args.out):
        print(f"{prog}: error: --out {args.out}: {problem}", file=sys.stderr)
        return 2
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
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
    env = describe([*prog.split(), *(argv if argv is not None else sys.argv[1:])])
    ctx = Context(
        device=device, quick=args.quick, video_frames=args.frames or DEFAULT_VIDEO_FRAMES,
        frames_given=args.frames is not None, full_matrix=args.full_matrix, options=args, progress=_progress(),
    )  # fmt: skip
    ctx.ceilings = measure_ceilings(device)
    result = {"schema": SCHEMA_VERSION, "environment": env, "ceilings": ctx.ceilings, "quick": args.quick, "suites": {}}
    for name in suites:
        print(f"running the {name} suite on {env['device']}", file=sys.stderr)
        result["suites"][name] = SUITES[name].run(ctx)
    problems = validate(result)
    if problems:
        print("the result does not match the schema:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    try:
        written = write(result, args.out, plots_too=not args.no_plots)
    except OSError as err:
        print(f"{prog}: error: writing the results under {args.out} failed: {err}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(str(path) for path in written)}", file=sys.stderr)
    return 0


def write(result: dict, out: Path, plots_too: bool = True) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>-<suite>.png`` (suites with a plot) under ``out``;
    print the tables. ``<stem>`` ends in ``-quick`` for a ``--quick`` run. Returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(result["environment"], quick=bool(result.get("quick")))
    written = [out / f"{stem}.json"]
    written[0].write_text(json.dumps(result, indent=1) + "\n")
    sections = [markdown_header(result)]
    for name, body in result["suites"].items():
        sections.append(f"## {name}\n\n{SUITES[name].markdown(body)}")
        if plots_too and (path := plots.plot(name, body, out / f"{stem}-{name}.png")) is not None:
            sections.append(f"![{name}]({path.name})")
            written.append(path)
        if (files := getattr(SUITES[name], "files", None)) is not None:  # a suite's own extra files (images)
            for path in files(body, out, f"{stem}-{name}"):
                sections.append(f"![{path.stem}]({path.name})")
                written.append(path)
    text = "\n\n".join(sections) + "\n"
    written.insert(1, out / f"{stem}.md")
    written[1].write_text(text)
    print(text)
    return written


def markdown_header(result: dict) -> str:
    env, ceilings = result["environment"], result["ceilings"]
    line = f"{env['device']} · torch {env['torch']} · triton {env['triton']} · CUDA {env['cuda']} · driver {env['driver']} · commit {env['commit']} · {env['timestamp']}"
    if ceilings:
        line += f"\n\nMeasured ceilings: bf16 matmul {ceilings['bf16_matmul_tflops']:.0f} TFLOP/s, device copy {ceilings['copy_gbps']:.0f} GB/s."
    quick = " (--quick)" if result.get("quick") else ""
    return f"# vin-kernels benchmark{quick}\n\n{line}\n\nCommand: `{env['command']}`"
