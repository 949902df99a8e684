"""``python -m bench`` / ``vin-bench``: run the suites this machine supports and write the results.

Examples::

    python -m bench                      # every suite the machine supports (flops only on a CPU)
    python -m bench --suite kernels      # one suite (GPU)
    python -m bench --quick              # a fast pass of every suite (a CPU smoke run without a GPU)
    python -m bench.report               # render the newest results into README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import plots
from .ceilings import measure_ceilings
from .environment import describe, result_stem
from .schema import SCHEMA_VERSION, validate
from .suites import Context
from .suites import flops as flops_suite
from .suites import kernels as kernels_suite
from .suites import model as model_suite

SUITES = {"flops": flops_suite, "kernels": kernels_suite, "model": model_suite}
GPU_SUITES = ("kernels", "model")


def _frames(text: str) -> tuple[int, ...]:
    try:
        frames = tuple(int(f) for f in text.split(",") if f.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--frames takes comma-separated integers, got {text!r}") from None
    if not frames or min(frames) < 16:
        raise argparse.ArgumentTypeError(f"--frames needs video lengths of at least 16 frames, got {text!r}")
    return frames


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="all", help="comma-separated: flops, kernels, model (default: all the machine supports)")
    parser.add_argument("--quick", action="store_true", help="few shapes and repeats; on a CPU a smoke run of every suite")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="output folder (default: bench/results)")
    parser.add_argument("--frames", type=_frames, default=(64, 128, 256, 512, 1024), help="video lengths in frames (default: 64,128,256,512,1024)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    names = list(SUITES) if args.suite == "all" else [s.strip() for s in args.suite.split(",")]
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        parser.error(f"--suite: unknown suite(s) {unknown}; choose from {list(SUITES)}")
    args.suites = names
    return args


def _progress():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return lambda iterable, **_: iterable
    return lambda iterable, desc="": tqdm(iterable, desc=desc, leave=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    suites = list(args.suites)
    if device.type != "cuda" and not args.quick:
        skipped = [s for s in suites if s in GPU_SUITES]
        if skipped and args.suite != "all":
            print(f"the {', '.join(skipped)} suite needs a CUDA GPU; add --quick for a CPU smoke run", file=sys.stderr)
            return 2
        suites = [s for s in suites if s not in GPU_SUITES]
        for name in skipped:
            print(f"skipping the {name} suite: no CUDA GPU (--quick runs a CPU smoke pass)", file=sys.stderr)
    env = describe([Path(sys.executable).name, "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    ctx = Context(device=device, quick=args.quick, video_frames=args.frames, progress=_progress())
    ctx.ceilings = measure_ceilings(device)
    result = {"schema": SCHEMA_VERSION, "environment": env, "ceilings": ctx.ceilings, "quick": args.quick, "suites": {}}
    for name in suites:
        print(f"running the {name} suite on {env['device']}", file=sys.stderr)
        result["suites"][name] = SUITES[name].run(ctx)
    problems = validate(result)
    if problems:
        print("the result does not match the schema:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    return write(result, args.out, plots_too=not args.no_plots)


def write(result: dict, out: Path, plots_too: bool = True) -> int:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>-<suite>.png`` under ``out``; print the tables."""
    out.mkdir(parents=True, exist_ok=True)
    stem = result_stem(result["environment"])
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    sections = [markdown_header(result)]
    for name, body in result["suites"].items():
        sections.append(f"## {name}\n\n{SUITES[name].markdown(body)}")
        if plots_too and (plot := plots.PLOTS[name](body, out / f"{stem}-{name}.png")) is not None:
            sections.append(f"![{name}]({plot.name})")
    text = "\n\n".join(sections) + "\n"
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {out / stem}.json, .md and plots", file=sys.stderr)
    return 0


def markdown_header(result: dict) -> str:
    env, ceilings = result["environment"], result["ceilings"]
    line = f"{env['device']} · torch {env['torch']} · triton {env['triton']} · CUDA {env['cuda']} · driver {env['driver']} · commit {env['commit']} · {env['timestamp']}"
    if ceilings:
        line += f"\n\nMeasured ceilings: bf16 matmul {ceilings['bf16_matmul_tflops']:.0f} TFLOP/s, device copy {ceilings['copy_gbps']:.0f} GB/s."
    quick = " (--quick)" if result.get("quick") else ""
    return f"# vin-kernels benchmark{quick}\n\n{line}\n\nCommand: `{env['command']}`"
