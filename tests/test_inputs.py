"""Input discovery, page selection, rendering and bad-input detection."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pymupdf
import pytest
from docgen import labelled_pdf
from PIL import Image

from ocrpress import inputs
from ocrpress.inputs import InputError, PageRenderer, discover


def _png(path: Path, size: tuple[int, int] = (200, 100)) -> Path:
    Image.new("RGB", size, "white").save(path)
    return path


def test_discover_folder_recursive_sorted_hidden_skipped(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    labelled_pdf(tmp_path / "b.pdf")
    _png(tmp_path / "sub" / "a.png")
    _png(tmp_path / ".hidden" / "x.png")
    _png(tmp_path / ".dot.png")
    (tmp_path / "notes.txt").write_text("not a document")
    # No extension, but PNG magic bytes: chosen by content.
    _png(tmp_path / "noext.png")
    os.rename(tmp_path / "noext.png", tmp_path / "scan0001")
    docs, problems = discover([str(tmp_path)])
    assert problems == []
    assert [d.rel for d in docs] == ["b", "scan0001", "sub/a"]
    assert [d.kind for d in docs] == ["pdf", "image", "image"]


def test_discover_glob_and_missing(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    labelled_pdf(tmp_path / "x" / "one.pdf")
    labelled_pdf(tmp_path / "two.pdf")
    docs, problems = discover([str(tmp_path / "**" / "*.pdf"), str(tmp_path / "nope.pdf")])
    assert sorted(d.rel for d in docs) == ["two", "x/one"]
    assert len(problems) == 1 and "nope.pdf" in problems[0] and "no such file" in problems[0]


def test_same_stem_keeps_extension(tmp_path: Path) -> None:
    labelled_pdf(tmp_path / "a.pdf")
    _png(tmp_path / "a.png")
    docs, _ = discover([str(tmp_path)])
    assert sorted(d.rel for d in docs) == ["a.pdf", "a.png"]


def test_stdin_paths_and_bytes(tmp_path: Path) -> None:
    a = labelled_pdf(tmp_path / "a.pdf")
    b = _png(tmp_path / "b.png")
    docs, _ = discover(["-"], stdin=io.BytesIO(f"{a}\n\n{b}\n".encode()))
    assert [d.rel for d in docs] == ["a", "b"]
    docs, _ = discover(["-"], stdin=io.BytesIO(a.read_bytes()))
    assert len(docs) == 1 and docs[0].kind == "pdf" and docs[0].display == "<stdin>"
    assert inputs.count_pages(docs[0]) == 2


@pytest.mark.parametrize(
    ("spec", "count", "expected"),
    [
        ("1-3,7,10-", 12, [0, 1, 2, 6, 9, 10, 11]),
        ("2", 1, []),
        (None, 3, [0, 1, 2]),
        ("-2", 5, [0, 1]),
        ("3-3,1", 5, [0, 2]),
    ],
)
def test_page_ranges(spec: str | None, count: int, expected: list[int]) -> None:
    assert inputs.select_pages(inputs.parse_page_ranges(spec), count) == expected


@pytest.mark.parametrize("spec", ["a-b", "0", "5-2", "1,,x"])
def test_bad_page_ranges(spec: str) -> None:
    with pytest.raises(ValueError, match="bad page range"):
        inputs.parse_page_ranges(spec)


def test_render_pdf_and_dpi(tmp_path: Path) -> None:
    docs, _ = discover([str(labelled_pdf(tmp_path / "a.pdf"))])
    page = PageRenderer().render(docs[0], 1, dpi=72)
    assert (page.width, page.height, page.dpi, page.index) == (595, 842, 72, 1)
    page = PageRenderer().render(docs[0], 0, dpi=144)
    assert page.width == 1190 and page.image.mode == "RGB"


def test_huge_pdf_page_rendered_smaller(tmp_path: Path) -> None:
    doc = pymupdf.open()
    doc.new_page(width=14400, height=14400)  # 200 x 200 inches
    doc.save(tmp_path / "poster.pdf")
    docs, _ = discover([str(tmp_path / "poster.pdf")])
    page = PageRenderer().render(docs[0], 0, dpi=144)
    assert page.width * page.height <= inputs.MAX_PAGE_PIXELS
    assert page.dpi is not None and page.dpi < 144


def test_tiff_frames_and_gif_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (60, 40), c) for c in ("red", "green", "blue")]
    frames[0].save(tmp_path / "m.tiff", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "g.gif", save_all=True, append_images=frames[1:])
    docs, _ = discover([str(tmp_path / "m.tiff"), str(tmp_path / "g.gif")])
    assert [inputs.count_pages(d) for d in docs] == [3, 1]
    third = PageRenderer().render(docs[0], 2)
    assert third.image.getpixel((5, 5)) == (0, 0, 255)


def test_transparent_png_becomes_white(tmp_path: Path) -> None:
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "t.png")
    docs, _ = discover([str(tmp_path / "t.png")])
    assert PageRenderer().render(docs[0], 0).image.getpixel((1, 1)) == (255, 255, 255)


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected words in the error)."""
    out: dict[str, tuple[Path, str]] = {}
    (tmp_path / "empty.pdf").write_bytes(b"")
    out["empty"] = (tmp_path / "empty.pdf", "empty file")
    (tmp_path / "fake.pdf").write_text("this is plain text, not a PDF at all\n")
    out["wrong type"] = (tmp_path / "fake.pdf", "not a PDF or image")
    (tmp_path / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(300))
    out["corrupt"] = (tmp_path / "corrupt.pdf", "PDF")
    enc = pymupdf.open()
    enc.new_page()
    enc.save(
        tmp_path / "enc.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o"
    )
    out["encrypted"] = (tmp_path / "enc.pdf", "encrypted")
    _png(tmp_path / "whole.png", (400, 400))
    data = (tmp_path / "whole.png").read_bytes()
    buf = io.BytesIO()
    Image.effect_noise((400, 400), 60).convert("RGB").save(buf, format="JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["truncated"] = (tmp_path / "trunc.jpg", "truncated")
    (tmp_path / "fake.png").write_bytes(data[:8] + b"garbage" * 10)
    out["broken png"] = (tmp_path / "fake.png", "image")
    return out


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    for name, (path, words) in _bad_files(tmp_path).items():
        docs, _ = discover([str(path)])
        with pytest.raises(InputError) as info:
            n = inputs.count_pages(docs[0])
            for i in range(n):
                PageRenderer().render(docs[0], i)
        msg = str(info.value)
        assert words in msg, (name, msg)
        assert "\n" not in msg


def test_zero_page_pdf(tmp_path: Path) -> None:
    # pymupdf refuses to save a zero-page PDF, so write a minimal one by hand.
    body = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    body += b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
    xref = len(body)
    body += b"xref\n0 3\n0000000000 65535 f \n0000000009 00000 n \n0000000052 00000 n \n"
    body += b"trailer<</Size 3/Root 1 0 R>>\nstartxref\n" + str(xref).encode() + b"\n%%EOF\n"
    (tmp_path / "zero.pdf").write_bytes(body)
    docs, _ = discover([str(tmp_path / "zero.pdf")])
    with pytest.raises(InputError, match="no pages"):
        inputs.count_pages(docs[0])


def test_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _png(tmp_path / "big.png", (3000, 3000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    docs, _ = discover([str(tmp_path / "big.png")])
    with pytest.raises(InputError, match="too large"):
        inputs.count_pages(docs[0])


def test_same_name_in_different_folders_never_share_an_output(tmp_path: Path) -> None:
    for sub in ("x", "y"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        _png(tmp_path / "in" / sub / "a.png")
        (tmp_path / f"f{sub}").mkdir()
        labelled_pdf(tmp_path / f"f{sub}" / "r.pdf", 1)
    named, _ = discover(
        [str(tmp_path / "in" / "x" / "a.png"), str(tmp_path / "in" / "y" / "a.png")]
    )
    assert [d.rel for d in named] == ["x/a", "y/a"]
    stdin, _ = discover(["-"], stdin=io.BytesIO(b"\n".join(str(d.path).encode() for d in named)))
    assert [d.rel for d in stdin] == ["x/a", "y/a"]
    folders, _ = discover([str(tmp_path / "fx"), str(tmp_path / "fy")])
    assert [d.rel for d in folders] == ["fx/r", "fy/r"]
    mixed, _ = discover([str(tmp_path / "fx"), str(tmp_path / "in")])
    assert len({d.rel for d in mixed}) == len(mixed) == 3
