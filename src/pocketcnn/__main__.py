"""``python -m pocketcnn`` and the ``pocketcnn`` console script.

Everything is imported inside :func:`main`, so that Ctrl-C at any moment of the start-up
(importing PyTorch takes seconds) ends with exit code 130 and one line, not a traceback.
"""
import sys


def main() -> None:
    try:
        from pocketcnn.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
