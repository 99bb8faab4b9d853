"""`make book`: the committed notebooks, the README and images/ as a static book in build/book/.

Lays out build/book-src/ with copies of the repository's notebooks, images/ and README.md, side by
side as in the repository (so the notebooks' links `NN_name.ipynb#...` and `../README.md#...`
resolve as they are), plus the landing page scripts/book/index.md, and runs Sphinx on it with
scripts/book/conf.py: warnings are errors, every document is read afresh, nothing is executed.
Writes build/book/.built when the build passed; exits non-zero, leaving no .built, when it did not.
Sphinx's messages name the copies in build/book-src/; a notebook's "line 440002" is in its 44th cell.
"""

import shutil
import sys
import time
from pathlib import Path

from sphinx.cmd.build import build_main

REPO = Path(__file__).resolve().parents[2]
BOOK_DIR = REPO / "scripts" / "book"
SOURCE = REPO / "build" / "book-src"
OUT = REPO / "build" / "book"
DOCTREES = REPO / "build" / "book-doctrees"
STAMP = OUT / ".built"
# What the book is made of, as (repository path, glob): copied into build/book-src/ (Sphinx resolves
# links through symbolic links to the files they point at, outside the source folder, so no links).
SOURCES = [("notebooks", "[0-9][0-9]_*.ipynb"), ("images", "*"), (".", "README.md"), ("scripts/book", "index.md")]


def lay_out_source() -> None:
    shutil.rmtree(SOURCE, ignore_errors=True)
    for folder, pattern in SOURCES:
        for path in sorted((REPO / folder).glob(pattern)):
            target = SOURCE / (path.name if folder == "scripts/book" else path.relative_to(REPO))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)  # no page of a renamed notebook left behind
    lay_out_source()
    start = time.monotonic()
    args = ["-b", "html", "-W", "--keep-going", "-E", "-q", "-c", str(BOOK_DIR), "-d", str(DOCTREES)]
    status = build_main([*args, str(SOURCE), str(OUT)])
    if status != 0:
        print("make book: the build failed (warnings are errors; see above). The paths named are copies in "
              "build/book-src/: fix the repository's files of the same name (a notebook's "
              "line 440002 is in its 44th cell, counting from 1).", file=sys.stderr)  # fmt: skip
        return status
    STAMP.write_text("")
    print(f"make book: {OUT.relative_to(REPO)}/index.html written in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
