"""`python -m engine ...` is the same as the `engine` console script (and what torchrun launches)."""
from engine.cli import main

if __name__ == "__main__":
    main()
