"""``python -m egra.train`` = ``egra-train``."""

from egra.cli.train import cli

if __name__ == "__main__":
    cli()
