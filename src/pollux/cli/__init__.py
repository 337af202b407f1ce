"""The ``pollux`` command line.

- ``pollux train CONFIG.toml``: fit (and calibrate) a model described by a TOML
  file, write a model file and a report folder of figures;
- ``pollux predict MODEL INPUT... --out TABLE``: label spectra files (APOGEE FITS,
  npz, HDF5, zarr) into a table (FITS, CSV, ECSV, HDF5), one row per spectrum;
- ``pollux info MODEL``: what a model file holds;
- ``pollux report MODEL [INPUT...] --out DIR``: diagnostic figures;
- ``pollux demo``: simulated stars with underestimated flux errors.

Exit status: 0 on success, 2 for bad usage or bad input (one line naming the
file or the setting at fault, no traceback), 130 when interrupted. No command
writes over one of its inputs; outputs that collide with an input or with each
other are refused before any work; outputs are written under temporary names
and moved into place only once complete, so a failed or interrupted command
leaves nothing it created (an existing output, with ``--overwrite``, is
replaced only then). The one exception is a ``.zarr`` store of ``predict``,
kept once a chunk is done so that running again resumes it.

``train``, ``predict`` and ``report`` keep JAX's compiled programs in a
persistent cache (``$POLLUX_CACHE_DIR``, else the user's cache folder) unless
given ``--no-cache``; importing pollux as a library changes no JAX setting.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from .._params import check_positive_int
from ._common import UsageError
from ._demo import QUICK_NUM_STEPS

__all__ = ["QUICK_NUM_STEPS", "UsageError", "main"]


def _positive_int(text: str) -> int:
    try:
        return check_positive_int(int(text), "N")
    except (TypeError, ValueError) as err:
        msg = f"expected a positive integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from err


def _float_at_least(text: str, low: float, strict: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    ok = value > low if strict else value >= low
    if not (ok and value != float("inf")):
        word = ">" if strict else ">="
        msg = f"expected a finite number {word} {low:g}, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _nonnegative_float(text: str) -> float:
    return _float_at_least(text, 0.0, strict=False)


def _positive_float(text: str) -> float:
    return _float_at_least(text, 0.0, strict=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pollux",
        description="Lux models of stellar spectra and labels, in JAX.",
    )
    parser.add_argument("--version", action="version", version=f"pollux {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub)
    _add_predict(sub)
    _add_info(sub)
    _add_report(sub)
    _add_demo(sub)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing output files"
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars (e.g. in logs)"
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="do not use the persistent compilation cache (then every run "
        "compiles from scratch)",
    )


def _add_visits(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--visits",
        choices=("combined", "all"),
        default="combined",
        help="apStar files: the combined spectrum or every visit (default: %(default)s)",
    )


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="fit a model described by a TOML file; write a model file and figures",
        description=(
            "Train a Lux model: read the stars of [data] (built-in APOGEE-like "
            "spectra, or spectra files and a label table), fit the model of [model], "
            "calibrate its label uncertainties, write the model file of [output] "
            "and a report folder of figures on held-out stars. See "
            "examples/train_apogee_like.toml for every key."
        ),
    )
    p.add_argument("config", type=Path, metavar="CONFIG.toml")
    _common(p)


def _add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="label spectra files with a trained model; write a table",
        description=(
            "Label every spectrum in the INPUT files (APOGEE apStar/apVisit/"
            "aspcapStar FITS, npz, HDF5, zarr) with the model file MODEL: one table "
            "row per spectrum with the labels, their uncertainties, the reduced "
            "chi-squared of the spectrum and flags. Spectra are resampled onto the "
            "model's wavelength grid and continuum-normalised where needed."
        ),
    )
    p.add_argument("model", type=Path, metavar="MODEL")
    p.add_argument("inputs", type=Path, nargs="+", metavar="INPUT")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="TABLE",
        help="output table: .fits, .csv, .ecsv, .h5 or .hdf5; or a .zarr store for "
        "one large zarr/HDF5 INPUT store, labelled chunk by chunk (rerun to resume)",
    )
    _add_visits(p)
    p.add_argument("--flux-key", help="array files: name of the flux array")
    p.add_argument("--err-key", help="array files: name of the error array")
    p.add_argument("--wavelength-key", help="array files: name of the wavelengths")
    p.add_argument(
        "--extra-err",
        type=_nonnegative_float,
        default=0.0,
        metavar="SIGMA",
        help="systematic error added in quadrature to every flux error, for real "
        "spectra that the training spectra match only to that precision "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--clip",
        type=_positive_float,
        default=None,
        metavar="SIGMA",
        help="leave out flux values more than SIGMA standard deviations from the "
        "model (sky-line residuals, cosmic rays) and infer again; N_CLIPPED counts "
        "them (default: keep every value)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=4096,
        metavar="N",
        help="spectra per batch (default: %(default)s)",
    )
    _common(p)


def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="describe a model file",
        description="Print what a model file holds: outputs, fit, calibration, ranges.",
    )
    p.add_argument("model", type=Path, metavar="MODEL")


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="diagnostic figures of a model, optionally on spectra files",
        description=(
            "Write PNG figures about MODEL into --out: its loss curve, learned flux "
            "scatter against wavelength, training latents; with INPUT spectra files "
            "also their model fits (residual spectra) and latents; with --labels "
            "also predicted against reference labels, residuals against SNR and "
            "z-score histograms."
        ),
    )
    p.add_argument("model", type=Path, metavar="MODEL")
    p.add_argument("inputs", type=Path, nargs="*", metavar="INPUT")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument(
        "--labels",
        type=Path,
        metavar="TABLE",
        help="reference labels of the INPUT spectra (FITS/CSV/ECSV table)",
    )
    p.add_argument("--id-column", help="column of --labels matching the spectra ids")
    _add_visits(p)
    _common(p)


def _add_demo(sub) -> None:
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


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo(args)
    if args.command == "train":
        from ._train import train

        return train(
            args.config,
            overwrite=args.overwrite,
            cache=not args.no_cache,
            progress=not args.no_progress,
        )
    if args.command == "predict":
        from ._predict import predict

        return predict(
            args.model,
            args.inputs,
            args.out,
            overwrite=args.overwrite,
            cache=not args.no_cache,
            batch_size=args.batch_size,
            extra_err=args.extra_err,
            clip=args.clip,
            visits=args.visits,
            keys={
                "flux_key": args.flux_key,
                "err_key": args.err_key,
                "wavelength_key": args.wavelength_key,
            },
            progress=not args.no_progress,
        )
    if args.command == "info":
        from ._predict import info

        return info(args.model)
    from ._report import report

    return report(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pollux`` command; returns the exit status."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # INPUT files after an option: `predict M a.fits --out t.csv b.fits`
        if getattr(args, "inputs", None) is None or any(
            e.startswith("-") for e in extra
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.inputs = [*args.inputs, *map(Path, extra)]
    try:
        return _run(args)
    except (UsageError, ValueError, TypeError, OSError) as err:
        if isinstance(err, OSError) and err.filename is not None:
            err = f"{err.strerror}: {err.filename!r}"  # e.g. permission denied
        _error(args.command, str(err))
        return 2
    except MemoryError as err:  # a size no setting bounded: still no traceback
        _error(args.command, f"out of memory ({err}); give smaller inputs or sizes")
        return 2
    except RecursionError:
        _error(args.command, "an input is nested too deeply to be read")
        return 2
    except KeyboardInterrupt:
        print(f"pollux {args.command}: interrupted", file=sys.stderr)
        return 130


def _error(command: str, text: str) -> None:
    """``pollux COMMAND: error: TEXT`` on one line of stderr: a message of many
    lines (a library's table of formats) keeps its first; characters stderr
    cannot encode are escaped."""
    lines = text.strip().splitlines() or ["(no message)"]
    line = f"pollux {command}: error: {lines[0]}"
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    line = line.encode(encoding, "backslashreplace").decode(encoding, "replace")
    print(line, file=sys.stderr)
