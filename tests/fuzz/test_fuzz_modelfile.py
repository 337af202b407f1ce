"""Fuzzing of model files: damaged files load as the undamaged one or are refused.

Four kinds of damage, each a hypothesis target:

- bytes: flips, truncations and insertions anywhere in the file;
- zip members: removed, added (any name, ``../`` and absolute ones included),
  renamed, repeated;
- manifest values replaced by random JSON of any type and depth — once as
  random damage (the payload checksum then refuses it) and once as a file
  crafted by hand (the checksum rewritten to match, so that the decoder and
  the checks behind it see the values);
- arrays replaced by random ones (any shape, dtype, special values) with their
  records rewritten to match.

Invariant (`fuzzing.refused_or_result`): a `ValueError`/`TypeError` naming the
file, or a model that labels as the undamaged one does (damage that cannot be
seen) — for crafted files, labels that are finite or flagged.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fuzzing import fuzz_settings, refused_or_result
from hypothesis import given
from hypothesis import strategies as st

import pollux as plx
from pollux.data import OutputData, PolluxData, ShiftScalePreprocessor
from pollux.transforms import AffineTransform, QuadraticTransform

N, D, L, K = 40, 12, 2, 2
MANIFEST = "manifest.json"


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A small model file (affine flux with scatter, quadratic labels,
    preprocessors, columns, wavelengths) and the labels it gives."""
    import numpyro.distributions as dist

    rng = np.random.default_rng(0)
    z = rng.normal(size=(N, K))
    flux = z @ rng.normal(size=(K, D)) + 0.05 * rng.normal(size=(N, D))
    label = z @ rng.normal(size=(K, L)) + 0.05 * rng.normal(size=(N, L))
    data = PolluxData(
        flux=OutputData(
            flux,
            err=np.full_like(flux, 0.05),
            preprocessor=ShiftScalePreprocessor.from_data(flux),
        ),
        label=OutputData(
            label,
            err=np.full_like(label, 0.05),
            preprocessor=ShiftScalePreprocessor.from_data(label),
        ),
    )
    model = plx.LuxModel(latent_size=K)
    model.register_output(
        "flux",
        AffineTransform(D, param_priors={"s": dist.HalfNormal(1.0).expand((D,))}),
    )
    model.register_output("label", QuadraticTransform(L))
    result = model.fit(data.preprocess(), progress=False, max_iter=20)
    path = tmp_path_factory.mktemp("fuzz") / "model.pollux"
    model.save(
        path,
        result,
        data=data,
        columns={"label": ["TEFF", "LOGG"]},
        wavelength={"flux": np.linspace(15100.0, 16900.0, D)},
    )
    probe = (flux[:3], np.full((3, D), 0.05))
    return _Original(path.read_bytes(), probe, _labels(plx.load(path), probe))


class _Original(tuple):
    """The file's bytes, the probe spectra and their labels (short repr, for
    hypothesis' reports)."""

    def __new__(cls, *parts):
        return super().__new__(cls, parts)

    def __repr__(self) -> str:
        return "<the undamaged model file>"


def _labels(trained, probe):
    labels = trained.label({"flux": probe})
    pred = labels.predictions["label"]
    return np.asarray(pred.data), np.asarray(pred.err), np.asarray(labels.flags)


def _members(raw: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return [(info.filename, zf.read(info)) for info in zf.infolist()]


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def _check(raw: bytes, tmp: Path, probe, expected, *, crafted: bool = False) -> str:
    """Write ``raw``, load it, check the invariant; "refused" or "loaded"."""
    path = tmp / "damaged.pollux"
    path.write_bytes(raw)
    trained = refused_or_result(lambda: plx.load(path), path)
    if trained is None:
        return "refused"
    if crafted:  # a file made by hand: honest labels, or a clear refusal
        got = refused_or_result(lambda: _labels(trained, probe), path, names=[""])
        if got is not None:
            values, err, flags = got
            bad = ~(np.isfinite(values).all(1) & np.isfinite(err).all(1))
            assert np.all(flags[bad] != 0), "NaN labels without a flag"
        return "loaded"
    got = _labels(trained, probe)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    return "loaded"


@fuzz_settings(40)
@given(data=st.data())
def test_damaged_bytes(original, tmp_path_factory, data):
    raw, probe, expected = original
    buf = bytearray(raw)
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(buf) - 1))
            buf[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        buf = buf[: data.draw(st.integers(0, len(buf) - 1))]
    else:
        i = data.draw(st.integers(0, len(buf)))
        buf[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    _check(bytes(buf), tmp_path_factory.mktemp("b"), probe, expected)


_NAMES = st.one_of(
    st.sampled_from(
        [
            MANIFEST,
            "arrays/result/params/flux/A.npy",
            "../escape.npy",
            "/abs/manifest.json",
            "C:/x.npy",
            "arrays/../manifest.json",
            "extra.txt",
        ]
    ),
    st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s),
)


@fuzz_settings(40)
@given(data=st.data())
def test_damaged_zip_members(original, tmp_path_factory, data):
    raw, probe, expected = original
    members = _members(raw)
    kind = data.draw(st.sampled_from(["remove", "add", "rename", "repeat"]))
    i = data.draw(st.integers(0, len(members) - 1))
    if kind == "remove":
        del members[i]
    elif kind == "add":
        content = data.draw(st.one_of(st.binary(max_size=64), st.just(members[i][1])))
        members.insert(
            data.draw(st.integers(0, len(members))), (data.draw(_NAMES), content)
        )
    elif kind == "rename":
        members[i] = (data.draw(_NAMES), members[i][1])
    else:
        members.insert(data.draw(st.integers(0, len(members))), members[i])
    _check(_zip(members), tmp_path_factory.mktemp("z"), probe, expected)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["$array", "$tuple", "$prior", "$transform", "LuxModel"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["$array", "$tuple", "$prior", "type", "args", "x"])
            | st.text(max_size=8),
            inner,
            max_size=4,
        )
    ),
    max_leaves=30,
)


_DEEP = "__deeply nested__"


def _deep_json(depth: int) -> str:
    """JSON of ``depth`` nested lists (beyond what `json.dumps` can write)."""
    return "[" * depth + "0" + "]" * depth


def _paths(tree, prefix=()):
    """Every path into a JSON tree (keys and list positions)."""
    yield prefix
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _paths(v, (*prefix, i))


def _replace(tree, path, value):
    if not path:
        return value
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tree


def _payload_sha(tree) -> str:
    text = json.dumps(tree, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@fuzz_settings(60)
@given(data=st.data(), crafted=st.booleans())
def test_damaged_manifest_values(original, tmp_path_factory, data, crafted):
    raw, probe, expected = original
    members = dict(_members(raw))
    manifest = json.loads(members[MANIFEST])
    paths = list(_paths(manifest))
    path = data.draw(st.sampled_from(paths))
    depth = data.draw(st.one_of(st.just(0), st.integers(30, 3000)))
    value = _DEEP if depth else data.draw(_JSON)
    manifest = _replace(manifest, path, value)
    if crafted and isinstance(manifest, dict) and "payload" in manifest:
        manifest["payload_sha256"] = _payload_sha(manifest["payload"])
    text = json.dumps(manifest).replace(json.dumps(_DEEP), _deep_json(depth))
    members[MANIFEST] = text.encode()
    _check(
        _zip(list(members.items())),
        tmp_path_factory.mktemp("m"),
        probe,
        expected,
        crafted=crafted,
    )


_DTYPES = st.sampled_from(
    ["f8", "f4", "f2", "i8", "i1", "u4", "?", "c16", "c8", "U3", "S3"]
)


@fuzz_settings(40)
@given(data=st.data())
def test_replaced_arrays(original, tmp_path_factory, data):
    raw, probe, expected = original
    members = dict(_members(raw))
    manifest = json.loads(members[MANIFEST])
    key = data.draw(st.sampled_from(sorted(manifest["arrays"])))
    old = manifest["arrays"][key]
    if data.draw(st.booleans()):
        shape = tuple(old["shape"])
    else:
        shape = tuple(data.draw(st.lists(st.integers(0, 5), max_size=4)))
    dtype = np.dtype(data.draw(_DTYPES))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    values = rng.normal(size=shape) * 10.0 ** data.draw(st.integers(-3, 300))
    specials = data.draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0])))
    flat = values.reshape(-1)
    for i, v in enumerate(specials[: flat.size]):
        flat[i] = v
    with np.errstate(all="ignore"):
        arr = values.astype(dtype)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    members[f"arrays{key}.npy"] = buf.getvalue()
    manifest["arrays"][key] = {
        "dtype": arr.dtype.str,
        "shape": list(arr.shape),
        "sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
    }
    members[MANIFEST] = json.dumps(manifest).encode()
    _check(
        _zip(list(members.items())),
        tmp_path_factory.mktemp("a"),
        probe,
        expected,
        crafted=True,
    )
