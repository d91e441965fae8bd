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

    cli_main(noted)


if __name__ == "__main__":
    main()
