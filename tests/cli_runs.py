"""Running ``pollux`` commands in the test process, and what a usage error is
(shared by the CLI test modules; not a test module)."""

from __future__ import annotations

from pollux import cli


def run(capsys, *argv):
    """``pollux *argv`` in this process: (exit status, stdout, stderr)."""
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def run_predict(capsys, model, inputs, out, *extra):
    """``pollux predict MODEL INPUT... --out OUT`` without cache or progress."""
    return run(
        capsys,
        "predict",
        model,
        *inputs,
        "--out",
        out,
        "--no-cache",
        "--no-progress",
        *extra,
    )


def assert_usage_error(rc, err, command, *fragments):
    """Exit status 2, one line ``pollux COMMAND: error: ...`` holding every
    fragment, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pollux {command}: error: "), err
    for fragment in fragments:
        assert fragment in err, err
