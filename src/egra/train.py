"""``python -m egra.train`` = ``egra-train``."""

from egra.cli.train import main

if __name__ == "__main__":
    main()
