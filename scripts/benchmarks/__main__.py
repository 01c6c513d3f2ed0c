"""``python -m scripts.benchmarks``: run the suite and write BENCHMARKS.md (see :mod:`.run`)."""

from .run import main

if __name__ == "__main__":
    main()
