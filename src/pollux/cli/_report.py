"""Diagnostic figures of a trained model on some stars (``pollux report``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report"]


def write_report(
    trained: Any,
    flux: np.ndarray | None,
    flux_err: np.ndarray | None,
    *,
    reference: tuple[np.ndarray, np.ndarray | None] | None,
    out: Path,
    max_stars: int = 6,
) -> list[Path]:
    """Write PNG figures (and ``summary.json``) about ``trained`` into ``out``.

    Always: the loss curve, the learned flux scatter against wavelength and the
    training stars' latents. With spectra: residual spectra of up to
    ``max_stars`` of them and their latents. With reference labels too:
    predicted against reference labels, residuals against SNR, z-scores.
    """
    final, out = out, out.with_name(f".{out.name}.partial")
    shutil.rmtree(out, ignore_errors=True)
    try:
        written = _write_figures(trained, flux, flux_err, reference, out, max_stars)
        shutil.rmtree(final, ignore_errors=True)  # --overwrite: no stale figures
        os.replace(out, final)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return [final / p.name for p in written]


def _write_figures(
    trained: Any,
    flux: np.ndarray | None,
    flux_err: np.ndarray | None,
    reference: tuple[np.ndarray, np.ndarray | None] | None,
    out: Path,
    max_stars: int,
) -> list[Path]:
    from .. import plot

    out.mkdir(parents=True)
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
        "final_loss": float(np.asarray(result.losses)[-1]),
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
    from ._common import UsageError, check_output_path, load_model, match_rows

    check_output_path(
        args.out, overwrite=args.overwrite, what="report folder", folder=True
    )
    if args.labels is not None and not args.inputs:
        raise UsageError("--labels needs INPUT spectra files to compare with")
    trained = load_model(args.model, cache=not args.no_cache)
    missing = [k for k in ("flux", "label") if k not in trained.fitted]
    if missing:
        msg = f"the model has no fitted output {missing} (report draws flux and label)"
        raise UsageError(msg)
    flux = err = reference = None
    if args.inputs:
        from ..readers import read_spectra, read_table

        spectra = read_spectra(
            [str(p) for p in args.inputs],
            wavelength=trained.wavelength.get("flux"),
            visits=args.visits,
        )
        flux, err = spectra.flux, spectra.err
        if args.labels is not None:
            columns = list(trained.columns.get("label", ()))
            if not columns:
                raise UsageError("the model file names no label columns to look up")
            table = read_table(args.labels, columns, id_column=args.id_column)
            rows = match_rows(spectra.ids, table, args.id_column, "--labels")
            reference = (table.values[rows], None)
    paths = write_report(trained, flux, err, reference=reference, out=args.out)
    print(f"Report ({len(paths)} files) written to {args.out}/")
    return 0
