"""The console script's entry point, and `python -m backprop_lab`.

Ctrl-C or SIGTERM in the ~0.3 s that importing the CLI (Hydra, rich) takes would end in a
traceback from the middle of an import; from here on a signal is only noted, and cli.main
acts on it as on one that comes while torch and the data load.
"""

import signal


def main() -> None:
    noted: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: noted.append(signum))
    from .cli import main as cli_main

    try:
        cli_main(noted)
    except SystemExit as e:
        exit_now(e.code)
        raise
    exit_now(0)


def exit_now(code: object) -> None:
    """End the process with `code` once the exit handlers have run, without Python's teardown.

    Freeing torch's modules one by one takes 0.4-0.6 s after every command that imported it
    (2-core CPU, measured), and nothing of this tool needs it: files are closed where they are
    written, and the handlers Python would run at exit (logging's flush, a claimed folder's
    release, joblib's and multiprocessing's workers, temporary folders) run here first. The
    normal exit is taken with a thread still working, an exit status that is not a number, or
    output that cannot be written (Python's exit reports that, status 120)."""
    import atexit
    import os
    import threading

    if not isinstance(code, (int, type(None))) or any(
            t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    if not flushed():
        return
    atexit._run_exitfuncs()  # each handler runs once: the normal exit would not run them again
    if flushed():  # and what a handler printed was written
        os._exit(code or 0)


def flushed() -> bool:
    """stdout and stderr flushed; False if what they hold cannot be written (a full disk, a closed pipe)."""
    import sys

    for stream in (sys.stdout, sys.stderr):  # None: started with the descriptor closed (`>&-`)
        if stream is None or getattr(stream, "closed", False):
            continue
        try:
            stream.flush()
        except OSError:
            return False
    return True


if __name__ == "__main__":
    main()
