"""cli/output: the console on stderr follows the stream that is sys.stderr now."""

import gc
import io
import os
import pty
import sys

from patientkit.cli import output


def test_a_stderr_swapped_in_never_gets_the_console_of_a_freed_one():
    """A console was kept by id(sys.stderr): a stream swapped in after a freed one may get
    its id (CPython reuses the memory at once), and with it the freed stream's console:
    one made for a terminal wrote colour codes into a captured error line (seen in the
    suite: run_cli on a terminal, then run_cli captured)."""
    main, side = pty.openpty()
    saved = sys.stderr
    try:
        sys.stderr = open(side, "w", closefd=False)  # noqa: SIM115 - closed below
        assert output.err_console().is_terminal
        address = id(sys.stderr)
        sys.stderr.close()
        sys.stderr = saved  # the terminal's stream freed: its id may be given again
        gc.collect()
        made = [io.TextIOWrapper(io.BytesIO()) for _ in range(1000)]  # kept: ids all differ
        # CPython gives the freed id again at once (unless something still holds it)
        stream = next((each for each in made if id(each) == address), made[-1])
        sys.stderr = stream
        assert not output.err_console().is_terminal, "the freed terminal's console"
        output.error("no colour")
        stream.flush()
        assert stream.buffer.getvalue() == b"error: no colour\n"
    finally:
        sys.stderr = saved
        os.close(main)
        os.close(side)
