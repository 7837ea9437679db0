"""The fault corpus: bad or odd inputs and state files, generated in code.

Each case builds its files beside a good two-page PDF (``in/good.pdf``) and says what the run
must do: its exit code, the one stderr line that names the bad input, and which files the
output folder holds afterwards. ``test_faults.py`` runs each through the real CLI.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymupdf
from docgen import labelled_pdf, make_pdf, sample_text
from PIL import Image

BASE_FILES = frozenset({"good.md", "_ocrpress_run.json"})


@dataclass
class Fault:
    """What one run over a fault must do."""

    code: int  # the documented exit code
    words: tuple[str, ...] = ()  # one stderr line holds all of them (it names the bad input)
    lines: int | None = 1  # how many stderr lines name the bad input (None: at least one)
    files: frozenset[str] | None = BASE_FILES  # all under -o but the state folder (None: any)
    args: list[str] | None = None  # default: the input folder
    stdin: bytes = b""
    out: Path | None = None  # default: tmp/out
    extra: list[str] = field(default_factory=list)  # more CLI options
    good: bool = True  # good.pdf converted
    prime: Callable[[Path], None] | None = None  # after a clean first run: damage its state
    check: Callable[[Path], None] | None = None  # more assertions on the output folder
    engine: str = "fake_engines:EchoEngine"
    env: dict[str, str] = field(default_factory=dict)
    preexec: Callable[[], None] | None = None
    hold: Any = None  # kept alive for the run (a held lock)
    resumed: frozenset[str] | None = None  # rerun without the fault: exit 0 and these files


Builder = Callable[[Path, Path], Fault]  # (input folder, tmp) -> Fault
CASES: dict[str, Builder] = {}
NEEDS_NON_ROOT: set[str] = set()


def case(name: str, non_root: bool = False) -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        CASES[name] = fn
        if non_root:
            NEEDS_NON_ROOT.add(name)
        return fn

    return register


def text_pdf(path: Path, pages: int = 5) -> bytes:
    """A text PDF big enough that a cut copy is repaired (not refused) by MuPDF."""
    make_pdf(path, [sample_text(20, seed=i) for i in range(pages)], fontsize=11)
    return path.read_bytes()


def files_with(*names: str) -> frozenset[str]:
    return BASE_FILES | set(names)


# ------------------------------------------------------------------ broken documents


@case("truncated-pdf-20pct")
def _trunc20(d: Path, tmp: Path) -> Fault:
    data = text_pdf(tmp / "whole.pdf")
    (d / "cut.pdf").write_bytes(data[: len(data) // 5])

    def check(out: Path) -> None:
        assert not (out / ".ocrpress" / "cut.done.json").exists(), "damaged doc marked done"

    # Page 1 survives; pages 2-5 are damaged: one line each, the document is not done.
    return Fault(
        1, ("cut.pdf: page 2: damaged PDF",), lines=None, files=files_with("cut.md"), check=check
    )


@case("truncated-pdf-50pct")
def _trunc50(d: Path, tmp: Path) -> Fault:
    data = text_pdf(tmp / "whole.pdf")
    (d / "half.pdf").write_bytes(data[: len(data) // 2])
    return Fault(1, ("half.pdf: page 3: damaged PDF",), lines=None, files=files_with("half.md"))


@case("truncated-pdf-with-workers")
def _trunc_workers(d: Path, tmp: Path) -> Fault:
    data = text_pdf(tmp / "whole.pdf")
    (d / "cut.pdf").write_bytes(data[: len(data) // 5])
    return Fault(
        1,
        ("cut.pdf: page 2: damaged PDF",),
        lines=None,
        files=files_with("cut.md"),
        extra=["--workers", "2"],
    )


@case("empty-pdf")
def _empty_pdf(d: Path, tmp: Path) -> Fault:
    (d / "empty.pdf").write_bytes(b"")
    return Fault(1, ("empty.pdf", "empty file"))


@case("text-named-pdf")
def _text_pdf(d: Path, tmp: Path) -> Fault:
    (d / "notes.pdf").write_text("just text\n")
    return Fault(1, ("notes.pdf", "not a PDF or image"))


@case("corrupt-pdf")
def _corrupt(d: Path, tmp: Path) -> Fault:
    (d / "junk.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 3)
    return Fault(1, ("junk.pdf", "PDF"))


@case("encrypted-pdf")
def _encrypted(d: Path, tmp: Path) -> Fault:
    doc = pymupdf.open()
    doc.new_page()
    doc.save(d / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="u", owner_pw="o")
    return Fault(1, ("locked.pdf", "encrypted PDF"))


@case("pdf-without-pages")
def _no_pages(d: Path, tmp: Path) -> Fault:
    (d / "nopages.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
        b"2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"
    )
    return Fault(1, ("nopages.pdf",))


@case("truncated-jpeg")
def _trunc_jpeg(d: Path, tmp: Path) -> Fault:
    buf = io.BytesIO()
    Image.effect_noise((300, 300), 60).convert("RGB").save(buf, format="JPEG")
    (d / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return Fault(1, ("cut.jpg", "truncated image"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@case("decompression-bomb-png")
def _bomb(d: Path, tmp: Path) -> Fault:
    (d / "bomb.png").write_bytes(_png_header(40000, 40000))
    return Fault(1, ("bomb.png", "image too large"))


@case("png-header-without-pixels")
def _hollow_png(d: Path, tmp: Path) -> Fault:
    (d / "hollow.png").write_bytes(_png_header(64, 64)[:-12])  # IEND cut off, data too short
    return Fault(1, ("hollow.png",))


@case("empty-png")
def _empty_png(d: Path, tmp: Path) -> Fault:
    (d / "zero.png").write_bytes(b"")
    return Fault(1, ("zero.png", "empty file"))


@case("random-bytes-png")
def _random_png(d: Path, tmp: Path) -> Fault:
    (d / "noise.png").write_bytes(bytes((i * 37) % 251 for i in range(4000)))
    return Fault(1, ("noise.png", "not a PDF or image"))


@case("tiff-with-a-broken-frame")
def _tiff(d: Path, tmp: Path) -> Fault:
    frames = [Image.new("RGB", (200, 100), c) for c in ("white", "gray")]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    (d / "scan.tif").write_bytes(buf.getvalue()[: len(buf.getvalue()) - 3000])
    return Fault(1, ("scan.tif",), lines=None, files=files_with("scan.md"))


# ------------------------------------------------------------------ odd but valid documents


@case("png-named-jpg")
def _png_as_jpg(d: Path, tmp: Path) -> Fault:
    Image.new("RGB", (120, 80), "white").save(d / "photo.jpg", format="PNG")
    return Fault(0, files=files_with("photo.md"))


@case("one-pixel-png")
def _one_pixel(d: Path, tmp: Path) -> Fault:
    Image.new("RGB", (1, 1), "white").save(d / "dot.png")
    return Fault(0, files=files_with("dot.md"))


@case("exif-orientation-6")
def _exif(d: Path, tmp: Path) -> Fault:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.new("RGB", (300, 100), "white").save(d / "phone.jpg", exif=exif)

    def check(out: Path) -> None:
        page = json.loads((out / "phone.json").read_text())["pages"][0]
        assert (page["width"], page["height"]) == (100, 300), "EXIF orientation not applied"

    return Fault(
        0,
        files=files_with("phone.md", "phone.json", "good.json"),
        extra=["-f", "markdown,json"],
        check=check,
    )


@case("names-with-spaces-quotes-newlines")
def _names(d: Path, tmp: Path) -> Fault:
    labelled_pdf(d / 'it\'s a "file" \nwith newline.pdf', 1)
    return Fault(0, files=files_with('it\'s a "file" \nwith newline.md'))


@case("non-utf8-name-json")
def _non_utf8(d: Path, tmp: Path) -> Fault:
    labelled_pdf(tmp / "cafe.pdf", 1)
    os.rename(bytes(tmp / "cafe.pdf"), bytes(d) + b"/caf\xe9.pdf")
    names = {os.fsdecode(b"caf\xe9.json"), os.fsdecode(b"caf\xe9.md"), "good.json"}
    return Fault(0, files=BASE_FILES | names, extra=["-f", "markdown,json"])


@case("stem-over-241-bytes")
def _long(d: Path, tmp: Path) -> Fault:
    labelled_pdf(d / ("x" * 250 + ".pdf"), 1)

    def check(out: Path) -> None:
        longs = [p.name for p in out.iterdir() if p.name.startswith("xxx")]
        assert len(longs) == 1 and longs[0].endswith(".md"), longs
        rel = longs[0][: -len(".md")]
        assert len(rel.encode()) <= 255 - len(".journal.jsonl")
        assert (out / ".ocrpress" / (rel + ".done.json")).is_file()

    return Fault(0, files=None, check=check)


@case("directory-named-like-a-pdf")
def _dir_pdf(d: Path, tmp: Path) -> Fault:
    (d / "box.pdf").mkdir()
    labelled_pdf(d / "box.pdf" / "inner.pdf", 1)
    return Fault(0, files=files_with("box.pdf/inner.md"))


@case("same-file-named-twice")
def _twice(d: Path, tmp: Path) -> Fault:
    return Fault(0, args=[str(d / "good.pdf"), str(d / "good.pdf"), str(d)])


# ------------------------------------------------------------------ output names


@case("collision-a.pdf-a.png-a.pdf.png")
def _collide(d: Path, tmp: Path) -> Fault:
    labelled_pdf(d / "a.pdf", 1)
    Image.new("RGB", (90, 60), "white").save(d / "a.png")
    Image.new("RGB", (60, 90), "white").save(d / "a.pdf.png")

    def check(out: Path) -> None:
        texts = {p: (out / p).read_text() for p in ("a.pdf.md", "a.pdf-2.md", "a.png.md")}
        assert "a.pdf p1" in texts["a.pdf.md"] and "a.pdf.png p1" in texts["a.pdf-2.md"]

    return Fault(0, files=files_with("a.pdf.md", "a.pdf-2.md", "a.png.md"), check=check)


@case("collision-across-roots")
def _collide_roots(d: Path, tmp: Path) -> Fault:
    for rel in ("r1/x/a.pdf", "r1/y/a.pdf", "r2/x/a.pdf"):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        labelled_pdf(tmp / rel, 1)
    args = [str(tmp / "r1/x/a.pdf"), str(tmp / "r1/y/a.pdf"), str(tmp / "r2"), str(d)]
    return Fault(0, args=args, files=files_with("x/a.md", "y/a.md", "x/a-2.md"))


@case("input-named-like-run-stats")
def _reserved(d: Path, tmp: Path) -> Fault:
    labelled_pdf(d / "_ocrpress_run.pdf", 1)

    def check(out: Path) -> None:
        assert json.loads((out / "_ocrpress_run.json").read_text())["documents"] == 2
        assert "pages" in json.loads((out / "_ocrpress_run-2.json").read_text())

    files = BASE_FILES | {"good.json", "_ocrpress_run-2.json", "_ocrpress_run-2.md"}
    return Fault(0, files=files, extra=["-f", "markdown,json"], check=check)


# ------------------------------------------------------------------ file-system oddities


@case("fifo-in-folder")
def _fifo_folder(d: Path, tmp: Path) -> Fault:
    os.mkfifo(d / "pipe.pdf")
    return Fault(1, ("pipe.pdf", "FIFO"))


@case("fifo-named")
def _fifo_named(d: Path, tmp: Path) -> Fault:
    os.mkfifo(tmp / "pipe.png")
    return Fault(1, ("pipe.png", "FIFO"), args=[str(tmp / "pipe.png"), str(d)])


@case("dangling-symlink-in-folder")
def _dangling(d: Path, tmp: Path) -> Fault:
    (d / "gone.pdf").symlink_to(tmp / "nowhere.pdf")
    return Fault(1, ("gone.pdf", "broken symbolic link"))


@case("dangling-symlink-named")
def _dangling_named(d: Path, tmp: Path) -> Fault:
    (tmp / "gone.pdf").symlink_to(tmp / "nowhere.pdf")
    return Fault(1, ("gone.pdf", "broken symbolic link"), args=[str(tmp / "gone.pdf"), str(d)])


@case("symlink-loops-in-folder")
def _loops(d: Path, tmp: Path) -> Fault:
    (d / "sub").mkdir()
    (d / "sub" / "up").symlink_to(d)
    (d / "sub" / "self").symlink_to(d / "sub")
    return Fault(0)


@case("glob-over-symlink-loops")
def _glob_loops(d: Path, tmp: Path) -> Fault:
    deep = d / "a" / "b" / "c"
    deep.mkdir(parents=True)
    for i, target in enumerate([d, d / "a", d / "a" / "b", deep]):
        for j in range(3):
            (deep / f"l{i}{j}").symlink_to(target)
    return Fault(0, args=[str(d / "**" / "*.pdf")])


@case("missing-argument")
def _missing(d: Path, tmp: Path) -> Fault:
    return Fault(1, ("nothere.pdf", "no such file"), args=[str(tmp / "nothere.pdf"), str(d)])


@case("empty-folder-argument")
def _empty_folder(d: Path, tmp: Path) -> Fault:
    (tmp / "void").mkdir()
    return Fault(1, ("void", "holds no PDF or image"), args=[str(tmp / "void"), str(d)])


@case("unreadable-subfolder", non_root=True)
def _unreadable_dir(d: Path, tmp: Path) -> Fault:
    (d / "secret").mkdir()
    labelled_pdf(d / "secret" / "s.pdf", 1)
    (d / "secret").chmod(0)
    return Fault(1, ("secret", "cannot read folder"))


@case("unreadable-file", non_root=True)
def _unreadable_file(d: Path, tmp: Path) -> Fault:
    labelled_pdf(d / "closed.pdf", 1)
    (d / "closed.pdf").chmod(0)
    return Fault(1, ("closed.pdf", "cannot read"))


# ------------------------------------------------------------------ stdin


@case("binary-stdin")
def _binary_stdin(d: Path, tmp: Path) -> Fault:
    return Fault(1, ("<stdin>", "neither a PDF"), args=["-", str(d)], stdin=b"\x00\x01\xfe" * 100)


@case("stdin-document-with-workers")
def _stdin_doc(d: Path, tmp: Path) -> Fault:
    data = labelled_pdf(tmp / "piped.pdf", 2).read_bytes()
    return Fault(
        0, args=["-", str(d)], stdin=data, files=files_with("stdin.md"), extra=["--workers", "2"]
    )


@case("stdin-paths-with-a-bad-one")
def _stdin_paths(d: Path, tmp: Path) -> Fault:
    listing = f"{d / 'good.pdf'}\n{tmp / 'absent.pdf'}\n".encode()
    return Fault(1, ("absent.pdf", "no such file"), args=["-"], stdin=listing)


# ------------------------------------------------------------------ the output folder


@case("output-is-a-file")
def _out_file(d: Path, tmp: Path) -> Fault:
    (tmp / "taken").write_text("not a folder\n")
    return Fault(2, ("taken", "not a folder"), out=tmp / "taken", good=False, files=frozenset())


@case("output-inside-input")
def _out_inside(d: Path, tmp: Path) -> Fault:
    crops = d / "out" / "old_images"
    crops.mkdir(parents=True)
    Image.new("RGB", (50, 50), "white").save(crops / "page-0001-figure-1.png")
    return Fault(
        0,
        ("out", "output folder"),
        out=d / "out",
        files=files_with("old_images/page-0001-figure-1.png"),
    )


@case("output-subfolder-unwritable")
def _out_sub(d: Path, tmp: Path) -> Fault:
    (d / "sub").mkdir()
    labelled_pdf(d / "sub" / "b.pdf", 1)

    def prime(out: Path) -> None:
        shutil.rmtree(out / "sub")
        (out / "sub").write_text("a file where the output subfolder should go\n")
        (out / ".ocrpress" / "sub" / "b.done.json").unlink()

    return Fault(1, ("sub/b.pdf", "cannot write"), files=files_with("sub"), prime=prime)


@case("disk-full")
def _disk_full(d: Path, tmp: Path) -> Fault:
    # Files may not grow past 2 KB: the big document's journal hits the limit (EFBIG), as
    # it would hit a full disk (ENOSPC); good.pdf, converted before it, is kept.
    labelled_pdf(d / "zz-big.pdf", 40)

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    def check(out: Path) -> None:
        assert not list(out.rglob("*.tmp")) and not list(out.rglob(".ocrpress-*"))

    return Fault(
        4,
        ("File too large", "resume"),
        files=frozenset({"good.md"}),
        preexec=limit,
        check=check,
        resumed=files_with("zz-big.md"),
    )


@case("state-folder-is-a-file")
def _state_file(d: Path, tmp: Path) -> Fault:
    out = tmp / "out"
    out.mkdir()
    (out / ".ocrpress").write_text("in the way\n")
    return Fault(4, ("cannot write the output folder",), good=False, files=frozenset({".ocrpress"}))


@case("output-folder-locked")
def _locked(d: Path, tmp: Path) -> Fault:
    state = tmp / "out" / ".ocrpress"
    state.mkdir(parents=True)
    f = open(state / "lock", "w")  # noqa: SIM115 - held for the run, closed by the test
    fcntl.flock(f, fcntl.LOCK_EX)
    f.write(f"{os.getpid()}\n")
    f.flush()
    words = ("another ocrpress run", f"pid {os.getpid()}")
    return Fault(5, words, good=False, files=frozenset(), hold=f)


# ------------------------------------------------------------------ damaged state files


def _rewrite_done(content: bytes) -> Callable[[Path], None]:
    def prime(out: Path) -> None:
        (out / ".ocrpress" / "good.done.json").write_bytes(content)

    return prime


def _journal_instead(lines: Callable[[dict[str, Any]], bytes]) -> Callable[[Path], None]:
    def prime(out: Path) -> None:
        done = out / ".ocrpress" / "good.done.json"
        fp = json.loads(done.read_text())["fingerprint"]
        done.unlink()
        (out / "good.md").unlink()
        (out / ".ocrpress" / "good.journal.jsonl").write_bytes(lines(fp))

    return prime


def _header(fp: dict[str, Any]) -> bytes:
    return json.dumps({"fingerprint": fp}).encode() + b"\n"


@case("done-marker-holding-a-list")
def _done_list(d: Path, tmp: Path) -> Fault:
    return Fault(0, prime=_rewrite_done(b"[]"))


@case("done-marker-invalid-utf8")
def _done_utf8(d: Path, tmp: Path) -> Fault:
    return Fault(0, prime=_rewrite_done(b'{"fingerprint": "\xff\xfe"}'))


@case("done-marker-outputs-deleted")
def _done_gone(d: Path, tmp: Path) -> Fault:
    return Fault(0, prime=lambda out: (out / "good.md").unlink())


@case("journal-holding-a-list")
def _journal_list(d: Path, tmp: Path) -> Fault:
    return Fault(0, prime=_journal_instead(lambda fp: b"[]\n"))


@case("journal-invalid-utf8-line")
def _journal_utf8(d: Path, tmp: Path) -> Fault:
    return Fault(0, prime=_journal_instead(lambda fp: _header(fp) + b'{"index": "\xff"}\n'))


@case("journal-torn-line")
def _journal_torn(d: Path, tmp: Path) -> Fault:
    return Fault(0, prime=_journal_instead(lambda fp: _header(fp) + b'{"index": 0, "sta'))


@case("journal-of-other-options")
def _journal_other(d: Path, tmp: Path) -> Fault:
    return Fault(0, prime=_journal_instead(lambda fp: _header({"dpi": 1}) + b"{}\n"))


@case("journal-binary-garbage")
def _journal_garbage(d: Path, tmp: Path) -> Fault:
    return Fault(0, prime=_journal_instead(lambda fp: bytes(range(256)) * 4))


# ------------------------------------------------------------------ options and engines


@case("pages-beyond-one-page-images")
def _pages(d: Path, tmp: Path) -> Fault:
    Image.new("RGB", (90, 60), "white").save(d / "single.png")

    def check(out: Path) -> None:
        md = (out / "good.md").read_text()
        assert "good.pdf p2" in md and "good.pdf p1" not in md

    return Fault(0, ("single.png", "selects none"), extra=["--pages", "2-"], check=check)


@case("engine-plan-raises")
def _planfail(d: Path, tmp: Path) -> Fault:
    labelled_pdf(d / "planfail.pdf", 1)
    return Fault(1, ("planfail.pdf", "cannot plan"), engine="fake_engines:FaultyEngine")


@case("figure-box-not-a-number")
def _nanfig(d: Path, tmp: Path) -> Fault:
    labelled_pdf(d / "nanfig.pdf", 1)
    return Fault(1, ("nanfig.pdf", "ValueError"), engine="fake_engines:FaultyEngine")
