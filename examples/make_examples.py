"""Regenerate examples/documents/: small documents made by this project (no third-party files).

Run ``make examples`` to rebuild them and their outputs in examples/output/.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from docgen import (  # noqa: E402
    make_pdf,
    make_scanned_image,
    make_two_column_pdf,
    sample_text,
)


def main() -> None:
    docs = HERE / "documents"
    docs.mkdir(exist_ok=True)
    make_pdf(
        docs / "letter.pdf",
        [
            ["Dear reader,", *sample_text(5, seed=21), "Yours sincerely, the ocrpress team."],
            sample_text(7, seed=22),
        ],
        fontname="tiro",
        fontsize=12,
    )
    make_two_column_pdf(docs / "two-column-report.pdf")
    scan = make_scanned_image(sample_text(8, seed=23), angle=1.5, noise=10)
    scan.save(docs / "scanned-note.jpg", quality=80)
    print(f"wrote {sorted(p.name for p in docs.iterdir())}")


if __name__ == "__main__":
    main()
