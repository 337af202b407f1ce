"""Diagnostic figures of a trained model on some stars (``pollux report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._common import Staged, staged_outputs

__all__ = ["write_report"]


def write_report(
    trained: Any,
    flux: np.ndarray | None,
    flux_err: np.ndarray | None,
    *,
    reference: tuple[np.ndarray, np.ndarray | None] | None,
    out: Path,
    max_stars: int = 6,
    staged: Staged | None = None,
) -> list[Path]:
    """Write PNG figures (and ``summary.json``) about ``trained`` into ``out``.

    The figures go into a temporary folder beside ``out``, which replaces ``out``
    only once every figure is written (with ``staged``: when it is committed).

    Always: the loss curve, the learned flux scatter against wavelength and the
    training stars' latents. With spectra: residual spectra of up to
    ``max_stars`` of them and their latents. With reference labels too:
    predicted against reference labels, residuals against SNR, z-scores.
    """
    if staged is None:
        with staged_outputs() as own:
            return write_report(
                trained,
                flux,
                flux_err,
                reference=reference,
                out=out,
                max_stars=max_stars,
                staged=own,
            )
    tmp = staged.folder(out)  # --overwrite: the old folder goes, no stale figure
    written = _write_figures(trained, flux, flux_err, reference, tmp, max_stars)
    return [out / p.name for p in written]


def _write_figures(
    trained: Any,
    flux: np.ndarray | None,
    flux_err: np.ndarray | None,
    reference: tuple[np.ndarray, np.ndarray | None] | None,
    out: Path,
    max_stars: int,
) -> list[Path]:
    from .. import plot

    out.mkdir(parents=True, exist_ok=True)
    result, lux = trained.result, trained.lux
    plot.loss_curve(result, path=out / "loss_curve.png")
    written = [out / "loss_curve.png"]
    flux_s = result.params.get("flux", {}).get("s")
    pre_flux = trained.preprocessors.get("flux")
    if flux_s is not None:
        s = np.asarray(flux_s)
        if pre_flux is not None:
            s = np.asarray(pre_flux.inverse_transform_err(s))
        plot.scatter_vs_wavelength(
            np.broadcast_to(s, (lux.outputs["flux"].output_size,)),
            trained.wavelength.get("flux"),
            path=out / "scatter_vs_wavelength.png",
        )
        written.append(out / "scatter_vs_wavelength.png")
    columns = list(trained.columns.get("label", ()))
    train_labels = None
    if "label" in trained.preprocessors and "latents" in result.params:
        z = result.params["latents"]
        fitted = lux.predict_outputs(z, result.params, names=["label"])["label"]
        train_labels = np.asarray(
            trained.preprocessors["label"].inverse_transform(fitted)
        )
        plot.latent_corner(
            np.asarray(z),
            color=train_labels[:, 0],
            color_label=columns[0] if columns else "label 0",
            path=out / "latents_training.png",
        )
        written.append(out / "latents_training.png")
    summary: dict[str, Any] = {
        "n_iter": result.n_iter,
        "converged": result.converged,
        "final_loss": _last(result.losses),
    }
    if flux is not None:
        labels = trained.label({"flux": (flux, flux_err)})
        pred = labels.predictions["label"]
        model_flux = _model_flux(trained, labels)
        wave = trained.wavelength.get("flux", np.arange(flux.shape[1]))
        plot.residual_spectra(
            wave,
            flux,
            model_flux,
            err=flux_err,
            max_stars=max_stars,
            path=out / "residual_spectra.png",
        )
        written.append(out / "residual_spectra.png")
        if labels.posterior is not None:
            plot.latent_corner(
                np.asarray(labels.posterior.mean),
                color=np.asarray(pred.data[:, 0]),
                color_label=columns[0] if columns else "label 0",
                path=out / "latents.png",
            )
            written.append(out / "latents.png")
        summary["stars"] = len(flux)
        summary["median_reduced_chi2"] = float(np.nanmedian(labels.reduced_chi2))
        summary["flagged"] = int(np.count_nonzero(labels.flags))
        if reference is not None:
            ref, ref_err = reference
            values, err = np.asarray(pred.data), np.asarray(pred.err)
            names = columns or None
            snr = np.nanmedian(
                np.where(np.isfinite(flux_err), flux / flux_err, np.nan), 1
            )
            plot.label_comparison(
                values, ref, err=err, names=names, path=out / "labels_vs_reference.png"
            )
            plot.residuals_vs_snr(
                values, ref, snr, names=names, path=out / "residuals_vs_snr.png"
            )
            plot.zscore_histograms(
                values,
                err,
                ref,
                reference_err=ref_err,
                names=names,
                path=out / "zscores.png",
            )
            written += [
                out / "labels_vs_reference.png",
                out / "residuals_vs_snr.png",
                out / "zscores.png",
            ]
            resid = values - ref
            summary["rmse"] = dict(
                zip(columns, np.sqrt(np.nanmean(resid**2, 0)).tolist(), strict=False)
            )
            z = resid / np.sqrt(err**2 + (0 if ref_err is None else ref_err**2))
            summary["z_std"] = dict(
                zip(columns, np.nanstd(z, 0).tolist(), strict=False)
            )
    (out / "summary.json").write_text(
        json.dumps(_finite_or_none(summary), indent=2, allow_nan=False) + "\n"
    )
    written.append(out / "summary.json")
    return written


def _last(losses: Any) -> float:
    values = np.asarray(losses, dtype=float).ravel()
    return float(values[-1]) if values.size else float("nan")


def _finite_or_none(tree: Any) -> Any:
    """JSON has no NaN: non-finite numbers become null."""
    if isinstance(tree, dict):
        return {k: _finite_or_none(v) for k, v in tree.items()}
    if isinstance(tree, float) and not np.isfinite(tree):
        return None
    return tree


def _model_flux(trained: Any, labels: Any) -> np.ndarray:
    """Model spectra (physical units) at each star's posterior mean."""
    lux, params = trained.lux, trained.result.params
    if labels.posterior is not None:
        z = labels.posterior.mean
    else:  # a Cannon: the latents are the labels, in model units
        z = trained.preprocessors["label"].transform(labels.predictions["label"].data)
    model = lux.predict_outputs(z, params, names=["flux"])["flux"]
    pre = trained.preprocessors.get("flux")
    return np.asarray(model if pre is None else pre.inverse_transform(model))


def report(args: Any) -> int:
    """``pollux report``: figures of a model file, on spectra files if given."""
    from ._common import (
        UsageError,
        check_distinct,
        check_input_file,
        check_no_repeats,
        check_output_path,
        check_replaceable_folder,
        load_model,
        match_rows,
    )

    sources = [("model file", args.model), *(("INPUT", p) for p in args.inputs)]
    if args.labels is not None:
        sources.append(("--labels table", args.labels))
    check_distinct([("report folder", args.out, True)], sources)
    what = "report folder"
    check_output_path(args.out, overwrite=args.overwrite, what=what, folder=True)
    check_replaceable_folder(args.out, what)
    if args.labels is not None and not args.inputs:
        raise UsageError("--labels needs INPUT spectra files to compare with")
    for path in args.inputs:
        check_input_file(path, "input", folder_ok=True)  # a zarr store is a folder
    check_no_repeats(args.inputs, "INPUT")
    if args.labels is not None:
        check_input_file(args.labels, "--labels table")
    if args.id_column is not None and args.labels is None:
        raise UsageError("--id-column names a column of --labels: give --labels")
    trained = load_model(args.model, cache=not args.no_cache)
    missing = [k for k in ("flux", "label") if k not in trained.fitted]
    if missing:
        msg = (
            f"model file {str(args.model)!r}: no fitted output {missing} (report "
            "draws flux and label)"
        )
        raise UsageError(msg)
    flux = err = reference = None
    if args.inputs:
        from ..readers import read_spectra, read_table

        spectra = read_spectra(
            [str(p) for p in args.inputs],
            wavelength=trained.wavelength.get("flux"),
            visits=args.visits,
        )
        if len(spectra) == 0:
            raise UsageError("the INPUT files hold no spectra")
        if not np.any(np.isfinite(spectra.flux) & np.isfinite(spectra.err)):
            msg = (
                f"the INPUT files {[str(p) for p in args.inputs]} hold no observed "
                "pixel (every spectrum is masked): nothing to draw"
            )
            raise UsageError(msg)
        flux, err = spectra.flux, spectra.err
        if args.labels is not None:
            columns = list(trained.columns.get("label", ()))
            if not columns:
                msg = (
                    f"model file {str(args.model)!r} names no label columns to look "
                    "up in --labels"
                )
                raise UsageError(msg)
            table = read_table(args.labels, columns, id_column=args.id_column)
            rows = match_rows(spectra.ids, table, args.id_column, "--labels")
            reference = (table.values[rows], None)
    try:
        paths = write_report(trained, flux, err, reference=reference, out=args.out)
    except OSError as exc:
        msg = f"report folder {str(args.out)!r}: could not be written ({exc})"
        raise UsageError(msg) from exc
    print(f"Report ({len(paths)} files) written to {args.out}/")
    return 0
