"""Damaged model files found by users, each refused with a message naming the
file and the item (the fuzzing in tests/fuzz/ looks for the ones not found yet)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile

import numpy as np
import pytest

import pollux as plx
from pollux.data import OutputData, PolluxData, ShiftScalePreprocessor
from pollux.transforms import LinearTransform

D, L, K = 6, 2, 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    rng = np.random.default_rng(1)
    flux, label = rng.normal(size=(30, D)), rng.normal(size=(30, L))
    data = PolluxData(
        flux=OutputData(flux, err=np.full_like(flux, 0.1)),
        label=OutputData(
            label,
            err=np.full_like(label, 0.1),
            preprocessor=ShiftScalePreprocessor.from_data(label),
        ),
    )
    model = plx.LuxModel(latent_size=K)
    model.register_output("flux", LinearTransform(D))
    model.register_output("label", LinearTransform(L))
    result = model.fit(data, progress=False, max_iter=5)
    path = tmp_path_factory.mktemp("m") / "m.pollux"
    return model.save(
        path, result, data=data, wavelength={"flux": np.linspace(1.0, 2.0, D)}
    )


def _members(path):
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _write(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, raw in members:
            zf.writestr(name, raw)
    return path


def _crafted(saved, path, edit_manifest=None, arrays=None):
    """A copy with its manifest (and arrays) edited and every checksum rewritten
    to match, as in a file made by hand."""
    members = dict(_members(saved))
    manifest = json.loads(members["manifest.json"])
    for key, arr in (arrays or {}).items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        members[f"arrays{key}.npy"] = buf.getvalue()
        manifest["arrays"][key] = {
            "dtype": arr.dtype.str,
            "shape": list(arr.shape),
            "sha256": hashlib.sha256(arr.tobytes()).hexdigest(),
        }
    if edit_manifest:
        edit_manifest(manifest)
    text = json.dumps(manifest["payload"], sort_keys=True, separators=(",", ":"))
    manifest["payload_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    return _write(path, list(members.items()))


def _refused(path, match):
    with pytest.raises(ValueError, match=match) as info:
        plx.load(path)
    assert path.name in str(info.value)


@pytest.mark.parametrize(
    "extra, match",
    [
        ("manifest.json", "appear twice"),
        ("notes.txt", "are unexpected"),
        ("../escape.npy", "unsafe name"),
        ("/etc/x.npy", "unsafe name"),
    ],
)
def test_extra_zip_members_are_refused(saved, tmp_path, extra, match):
    members = _members(saved)
    content = members[0][1] if extra == "manifest.json" else b"x"
    _refused(_write(tmp_path / "x.pollux", [*members, (extra, content)]), match)


def test_complex_parameters_are_refused(saved, tmp_path):
    a = np.load(io.BytesIO(dict(_members(saved))["arrays/result/params/flux/A.npy"]))
    path = _crafted(
        saved, tmp_path / "c.pollux", arrays={"/result/params/flux/A": a + 1j}
    )
    _refused(path, r"array '/result/params/flux/A'.*complex128")


def test_an_impossible_declared_size_is_refused_unread(saved, tmp_path):
    members = dict(_members(saved))
    key = "arrays/result/params/flux/A.npy"
    raw = members[key]
    members[key] = raw.replace(b"(6, 2)", b"(600000000000, 2)", 1)
    assert members[key] != raw
    _refused(_write(tmp_path / "s.pollux", list(members.items())), "declares shape")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m["payload"]["result"].pop("n_iter"), "lacks 'n_iter'"),
        (
            lambda m: m["payload"]["model"].__setitem__("latent_size", 1e400),
            "latent_size",
        ),
        (
            lambda m: m["payload"]["model"]["outputs"]["flux"][
                "$transform"
            ].__setitem__("output_size", 10**30),
            "output_size",
        ),
    ],
    ids=["missing key", "overflowing float", "huge integer"],
)
def test_damaged_records_are_refused(saved, tmp_path, edit, match):
    _refused(_crafted(saved, tmp_path / "r.pollux", edit), match)


def test_deep_nesting_is_refused(saved, tmp_path):
    members = dict(_members(saved))
    manifest = json.loads(members["manifest.json"])
    manifest["payload"]["result"]["settings"]["deep"] = "DEEP"
    text = json.dumps(manifest).replace('"DEEP"', "[" * 5000 + "]" * 5000)
    members["manifest.json"] = text.encode()
    _refused(_write(tmp_path / "d.pollux", list(members.items())), "nests deeper")


def test_a_stored_grid_with_nan_blames_the_file(saved, tmp_path):
    wave = np.linspace(1.0, 2.0, D)
    wave[2] = np.nan
    path = _crafted(saved, tmp_path / "w.pollux", arrays={"/wavelength/flux": wave})
    _refused(path, "stored wavelength grid of 'flux'")
