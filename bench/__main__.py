"""`python -m bench`: measure, print the table, optionally write it as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/aclImdb_v1_labeled.tar.gz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a reduced run of a few minutes, for checks (figures are noisier)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows to this JSON file")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="the IMDB archive (default: %(default)s)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="bertclf cache to use and keep for everything (default: the usual "
                             "cache for the extracted archive only, and a fresh temporary one "
                             "for token ids and built models, so token caches start empty)")
    parser.add_argument("--rows", metavar="N,N", help="only these rows, e.g. 1,4")
    return parser.parse_args(argv)


if __name__ == "__main__":
    # Spawned children import this module as __mp_main__: keep the work under this guard.
    from bench.run import main

    raise SystemExit(main(parse_args()))
