"""Running an ``s2vt`` command from a test: in this process (fast: torch is already imported, and
evaluations share the process's METEOR), with the result a subprocess would give."""
import contextlib
import io
import subprocess


def s2vt_in_process(*args) -> subprocess.CompletedProcess:
    """``s2vt ARGS`` run by ``main`` here: (returncode, stdout, stderr) as ``python -m s2vt ARGS`` gives them."""
    from s2vt.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse: --help, --version, a usage error
            rc = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(["s2vt", *map(str, args)], rc, out.getvalue(), err.getvalue())
