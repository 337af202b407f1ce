"""The ``pollux`` command line.

``pollux demo`` runs the study of `pollux.studies.underestimated` (simulated stars
whose flux errors are underestimated; a Lux model with and without a learned extra
scatter), prints a summary table and writes figures. ``pollux --version`` prints
the version.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from ._params import check_positive_int

__all__ = ["QUICK_NUM_STEPS", "main"]

#: Optimiser steps per MAP fit of ``pollux demo --quick``.
QUICK_NUM_STEPS = 4096


def _positive_int(text: str) -> int:
    try:
        return check_positive_int(int(text), "N")
    except (TypeError, ValueError) as err:
        msg = f"expected a positive integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from err


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pollux",
        description="Lux models of stellar spectra and labels, in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"pollux {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="simulated stars with underestimated flux errors: train, apply, compare",
        description=(
            "Simulate 2048 stars (8 latents, 2 labels, 128 flux pixels) whose flux "
            "has extra scatter missing from its reported errors; train two Lux "
            "models on half of them (model 1 trusts the errors, model 2 learns an "
            "extra scatter per pixel), label the other half and compare with the "
            "true labels. Prints a summary table and writes PNG figures."
        ),
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("pollux-demo"),
        metavar="DIR",
        help="folder for the figures and summary files (default: %(default)s)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help=(
            f"{QUICK_NUM_STEPS} optimiser steps per fit instead of the tutorial's "
            "32768 (about a minute on a laptop)"
        ),
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=42,
        help="seed of the simulated data (default: %(default)s, the tutorial's)",
    )
    demo.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        metavar="N",
        help="optimiser steps per fit (overrides --quick)",
    )
    return parser


def _run_demo(args: argparse.Namespace) -> int:
    # Imported here: only this command needs the study. Double precision must be
    # on before JAX creates any array.
    from .studies import underestimated as demo

    demo.enable_float64()

    from tqdm.auto import tqdm

    if args.steps is not None:
        num_steps = args.steps
    elif args.quick:
        num_steps = QUICK_NUM_STEPS
    else:
        num_steps = demo.TUTORIAL_NUM_STEPS
    if num_steps < demo.TUTORIAL_NUM_STEPS:
        print(
            f"Using {num_steps} optimiser steps per MAP fit, fewer than the "
            f"tutorial's {demo.TUTORIAL_NUM_STEPS}."
        )
    else:
        print(f"Using {num_steps} optimiser steps per MAP fit.")
    sys.stdout.flush()

    t0 = time.perf_counter()
    stages = [*demo.STAGES, "write figures"]
    with tqdm(total=len(stages), unit="stage", desc=stages[0]) as bar:
        started = []

        def on_stage(name: str) -> None:
            if started:
                bar.update(1)
            started.append(name)
            bar.set_description(name)

        result = demo.run_demo(num_steps=num_steps, seed=args.seed, on_stage=on_stage)
        bar.update(1)
        bar.set_description(stages[-1])
        paths = demo.write_figures(result, args.out)
        summary = result.summary()
        (args.out / "summary.txt").write_text(summary + "\n")
        (args.out / "summary.json").write_text(
            json.dumps(result.to_dict(), indent=2) + "\n"
        )
        bar.update(1)
        bar.set_description("done")
    total = time.perf_counter() - t0

    print()
    print(summary)
    print(f"Total time: {total:.1f} s")
    print(f"Figures and summary written to {args.out}/:")
    for path in [*paths, args.out / "summary.txt", args.out / "summary.json"]:
        print(f"  {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pollux`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _run_demo(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
