"""Fuzzing of ``pollux train``'s TOML configuration: parsed, or refused by name.

Two targets:

- values: random TOML values of every type (integers of any size, floats with
  inf and nan, booleans, strings, arrays, tables, dates, times, datetimes) put
  into a valid configuration (built-in or files ``[data]``) under random keys —
  known ones, unknown ones, unknown sections, whole sections — and checked by
  `parse_config` and `check_config` only (nothing is read or trained);
- text: random printable (and a few non-UTF-8) mutations of a configuration
  file run through ``pollux train`` itself, its ``[data]`` matching no file or
  holding an invalid value, so that no training starts.

Invariants: a `TrainConfig`, or a `UsageError`/`ValueError`/`TypeError` of one
line that names the section or key changed — never another exception; the
command exits with status 2 and one line on stderr (no traceback) and leaves
the folder as it was.
"""

from __future__ import annotations

import datetime as dt

import pytest
from fuzzing import digest, fuzz_settings, watchdog
from hypothesis import given
from hypothesis import strategies as st

from pollux import cli
from pollux.cli import _train
from pollux.cli._common import UsageError
from pollux.cli._config import _SECTIONS, TrainConfig, check_config, parse_config

# ------------------------------------------------------------------ random values

TEXT = st.text(max_size=10)
SPECIAL_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "~",
        "~no-such-user-pollux/m.pollux",
        ".",
        "..",
        "/",
        "a\x00b",
        "\ud800",
        "*",
        "model.pollux",
        "report",
        "c.toml",
        "s1.npz",
        "labels.csv",
        "linear",
        "affine",
        "quadratic",
        "combined",
        "all",
        "ID",
        "snr",
        "FLAG",
        "TEFF",
        "teff",
        "TEFF_ERR",
        "APOGEE_ID",
    ]
)
SPECIAL_INTS = st.sampled_from(
    [
        *(0, 1, 2, 10, 11, 64, 65, 100, 101, 100_000, 100_001, 10**6, 10**6 + 1),
        *(2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63), 2**64, 10**18, 10**400, -1),
    ]
)
SCALARS = (
    st.integers()
    | SPECIAL_INTS
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.floats(min_value=0, max_value=1)
    | st.booleans()
    | TEXT
    | SPECIAL_STRINGS
    | st.dates()
    | st.times()
    | st.datetimes(timezones=st.none() | st.just(dt.UTC))
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)
SECTION_NAMES = sorted(_SECTIONS)


def _base(kind: str) -> dict:
    """A valid configuration (as parsed TOML): built-in spectra, or files."""
    if kind == "apogee":
        data = {"apogee_like": 60, "apogee_like_seed": 3, "apogee_like_dwarfs": 0.1}
    else:
        data = {
            "spectra": ["s*.npz"],
            "labels": "labels.csv",
            "label_columns": ["TEFF", "LOGG"],
            "label_err_columns": ["E_TEFF", "E_LOGG"],
            "id_column": "APOGEE_ID",
            "visits": "all",
        }
    return {
        "data": data,
        "model": {
            "latent_size": 2,
            "flux": "linear",
            "label": "quadratic",
            "flux_scatter": True,
            "label_scatter": True,
        },
        "fit": {"max_iter": 5, "tol": 1e-6, "float64": False, "accelerate": True},
        "calibrate": {"folds": 3, "seed": 1},
        "output": {
            "model": "m.pollux",
            "report": "r",
            "holdout": 0.2,
            "seed": 2,
        },
    }


@st.composite
def changes(draw):
    """``(section, key, value)``: a known or random section, a known or random
    key (None: the whole section replaced by ``value``)."""
    section = draw(st.sampled_from(SECTION_NAMES) | TEXT)
    known = sorted(_SECTIONS.get(section, ()))
    key = draw(st.none() | (st.sampled_from(known) if known else st.nothing()) | TEXT)
    return section, key, draw(VALUES)


def _apply(raw: dict, section: str, key: str | None, value) -> None:
    if key is None or not isinstance(raw.get(section, {}), dict):
        raw[section] = value
    else:
        raw.setdefault(section, {})[key] = value


def _named(text: str, section: str, key: str | None) -> bool:
    """Whether a message names the ``section`` (whole) or ``key`` changed."""
    if key is None:
        return f"[{section}]" in text or repr(section) in text
    return key in text or repr(key) in text or repr(section) in text


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two (empty) spectra files and nothing else: the files config's base."""
    base = tmp_path_factory.mktemp("config")
    (base / "s1.npz").write_bytes(b"")
    (base / "s2.npz").write_bytes(b"")
    return base


@fuzz_settings(400)
@given(
    kind=st.sampled_from(["apogee", "files"]),
    edits=st.lists(changes(), min_size=1, max_size=3),
)
def test_random_values_give_a_config_or_an_error_naming_the_key(folder, kind, edits):
    raw = _base(kind)
    for section, key, value in edits:
        _apply(raw, section, key, value)
    before = digest(folder)
    try:
        with watchdog(30):
            cfg = check_config(parse_config(raw, folder))
    except (ValueError, TypeError) as err:  # UsageError is a ValueError
        text = str(err)
        assert isinstance(err, UsageError), f"{type(err).__name__}: {text}"
        assert "\n" not in text, text
        assert any(_named(text, s, k) for s, k, _ in edits), (edits, text)
    else:
        assert isinstance(cfg, TrainConfig)
        assert all(isinstance(p, type(folder)) for p in (cfg.model, *cfg.spectra))
    assert digest(folder) == before


@fuzz_settings(60)
@given(value=VALUES)
def test_random_values_at_every_known_key_are_refused_by_name(folder, value):
    """Every known key of both bases, each with the same random value."""
    for kind in ("apogee", "files"):
        for section, keys in _SECTIONS.items():
            for key in sorted(keys):
                raw = _base(kind)
                _apply(raw, section, key, value)
                try:
                    check_config(parse_config(raw, folder))
                except UsageError as err:
                    assert _named(str(err), section, key), (section, key, str(err))
                    assert "\n" not in str(err)


# -------------------------------------------------------------------- random text

CONFIG_TEXT = """\
# pollux train: a configuration whose [data] matches no file
[data]
spectra = ["nothing/*.npz", "more/*.fits"]
labels = "allStar.fits"
label_columns = ["TEFF", "LOGG"]
label_err_columns = ["TEFF_ERR", "LOGG_ERR"]
id_column = "APOGEE_ID"
visits = "combined"

[model]
latent_size = 4
flux = "quadratic"
label = "linear"
flux_scatter = true
label_scatter = true

[fit]
max_iter = 300
tol = 1e-6
float64 = false
accelerate = true

[calibrate]
folds = 5
seed = 0

[output]
model = "model.pollux"
report = "report"
holdout = 0.2
seed = 0
"""
# Built-in spectra: valid (training is stubbed out), or with an invalid value.
BUILTIN_TEXT = CONFIG_TEXT.replace(
    '[data]\nspectra = ["nothing/*.npz", "more/*.fits"]\nlabels = "allStar.fits"\n'
    'label_columns = ["TEFF", "LOGG"]\nlabel_err_columns = ["TEFF_ERR", "LOGG_ERR"]\n'
    'id_column = "APOGEE_ID"\nvisits = "combined"\n',
    "[data]\napogee_like = 60\napogee_like_seed = 1\napogee_like_dwarfs = 0.2\n",
)
INVALID_TEXT = BUILTIN_TEXT.replace("latent_size = 4", "latent_size = 0")

TOKENS = st.sampled_from(
    [
        "=",
        "[",
        "]",
        "[[",
        "]]",
        '"',
        "'",
        "'''",
        '"""',
        "\n",
        "#",
        ",",
        "{",
        "}",
        ".",
        "inf",
        "-inf",
        "nan",
        "1e999",
        "0x7fffffffffffffff",
        "9" * 40,
        "true",
        "1979-05-27T07:32:00Z",
        "07:32:00",
        "\\u0000",
        "\\ud800",
        "~",
        "*",
        "/",
        "..",
        "apogee_like = 60\n",
        "[data]\n",
        "[output]\n",
        'report = "."\n',
        'model = "c.toml"\n',
        "latent_size = 100000\n",
        'label_columns = ["ID"]\n',
        "a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]",
    ]
)
PRINTABLE = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126)
    | st.sampled_from("\n\t"),
    min_size=1,
    max_size=4,
)
FRAGMENTS = (PRINTABLE | TOKENS).map(str.encode) | st.sampled_from(
    [b"\xff", b"\xc3", b"\x00", b"\xef\xbb\xbf"]
)
# TOML values as text, for the right-hand side of a ``key = value`` line.
VALUE_TEXT = (
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "11",
            "65",
            "100001",
            "1_000_001",
            "4294967296",
            "18446744073709551616",
            "9" * 30,
            "0xff",
            "0o777",
            "0b101",
            "inf",
            "-inf",
            "nan",
            "+nan",
            "1e308",
            "1e-320",
            "0.0",
            "0.95",
            "true",
            "false",
            '""',
            '"~"',
            '"."',
            '"/"',
            '"c.toml"',
            '"report"',
            '"model.pollux"',
            '"nothing/*"',
            '"\\u0000"',
            '["ID"]',
            '["TEFF", "teff"]',
            '["TEFF", "TEFF_ERR"]',
            "[]",
            "[[]]",
            "[1, 2]",
            "{}",
            "{ a = 1 }",
            "1979-05-27",
            "07:32:00",
            "1979-05-27T07:32:00-08:00",
        ]
    )
    | st.integers().map(str)
    | st.floats().map(repr)
    | PRINTABLE
)
ANY_EDIT = st.tuples(
    st.sampled_from(["insert", "delete", "replace"]),
    st.integers(min_value=0, max_value=10_000),
    FRAGMENTS,
)
VALUE_EDIT = st.tuples(
    st.just("value"), st.integers(min_value=0, max_value=10_000), VALUE_TEXT
)
# Byte edits mostly break the TOML; value edits keep it and reach the checks.
EDITS = st.lists(VALUE_EDIT, min_size=1, max_size=4) | st.lists(
    ANY_EDIT | VALUE_EDIT, min_size=1, max_size=6
)


def _mutate(text: bytes, edits) -> bytes:
    for op, where, fragment in edits:
        if op == "value":  # the value of the where-th `key = value` line
            lines = text.split(b"\n")
            keyed = [i for i, line in enumerate(lines) if b" = " in line]
            if keyed:
                i = keyed[where % len(keyed)]
                lines[i] = lines[i].split(b" = ", 1)[0] + b" = " + fragment.encode()
                text = b"\n".join(lines)
            continue
        at = where % (len(text) + 1)
        if op == "insert":
            text = text[:at] + fragment + text[at:]
        elif op == "delete":
            text = text[:at] + text[at + len(fragment) :]
        else:
            text = text[:at] + fragment + text[at + len(fragment) :]
    return text


def _no_training(cfg):
    """Should a mutation make a valid configuration: stop before reading data."""
    raise UsageError("fuzz: the configuration is valid (training would start)")


@fuzz_settings(250)
@given(base=st.sampled_from([CONFIG_TEXT, BUILTIN_TEXT, INVALID_TEXT]), edits=EDITS)
def test_random_config_text_exits_2_with_one_line(
    tmp_path, capsys, monkeypatch, base, edits
):
    monkeypatch.setattr(_train, "load_training_set", _no_training)
    config = tmp_path / "c.toml"
    config.write_bytes(_mutate(base.encode(), edits))
    monkeypatch.chdir(tmp_path)
    with watchdog(30):
        rc = cli.main(["train", str(config), "--no-cache", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pollux train: error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]
