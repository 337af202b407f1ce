"""``pollux demo``: the underestimated-uncertainties study, end to end."""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["QUICK_NUM_STEPS", "run_demo"]

#: Optimiser steps per MAP fit of ``pollux demo --quick``.
QUICK_NUM_STEPS = 4096


def run_demo(args: argparse.Namespace) -> int:
    # Imported here: only this command needs the study. Double precision must be
    # on before JAX creates any array.
    from ..studies import underestimated as demo

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
