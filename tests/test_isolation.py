"""The fault fixes in-process and fast: naming rule, discovery's skips, damage detection,
state files, the output lock, the isolation rule and the parent watch."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from docgen import labelled_pdf, make_pdf, sample_text
from PIL import Image

from ocrpress import discovery, journal
from ocrpress.discovery import discover
from ocrpress.errors import LockedError, OutputError, UsageError, is_fatal_write_error
from ocrpress.inputs import InputError, PageRenderer, page_damage
from ocrpress.isolation import DocumentWriteError, output_guard
from ocrpress.lock import locked_output
from ocrpress.procs import watch_process


def _rels(found: list[tuple[str, str, str, str]]) -> list[str]:
    return [d.rel for d in discovery._assign_rels(found)]


def test_naming_rule_extensions_suffixes_reserved(tmp_path: Path) -> None:
    d = str(tmp_path)
    found = [(f"{d}/{n}", f"{d}/{n}", n, "pdf") for n in ("a.pdf", "a.pdf.png", "a.png")]
    assert _rels(found) == ["a.pdf", "a.pdf-2", "a.png"]
    found = [(f"{d}/{n}", n, n, "pdf") for n in ("_ocrpress_run.pdf", "_ocrpress_run-2.pdf")]
    assert _rels(found) == ["_ocrpress_run-2", "_ocrpress_run-2-2"]


def test_naming_rule_same_name_other_roots(tmp_path: Path) -> None:
    for rel in ("r1/x/a.pdf", "r1/y/a.pdf", "r2/x/a.pdf"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        labelled_pdf(tmp_path / rel, 1)
    docs, _ = discover(
        [str(tmp_path / "r1/x/a.pdf"), str(tmp_path / "r1/y/a.pdf"), str(tmp_path / "r2")]
    )
    assert [d.rel for d in docs] == ["x/a", "y/a", "x/a-2"]


def test_long_names_fit_the_state_files() -> None:
    long = "é" * 200  # 400 bytes
    (rel,) = _rels([(f"/nowhere/{long}.pdf", "x", f"{long}.pdf", "pdf")])
    assert len(rel.encode()) <= 255 - len(".journal.jsonl") and "~" in rel
    # Two long names with the same start stay apart (the hash is of the whole name).
    a, b = _rels([(f"/n/{long}{c}.pdf", "x", f"{long}{c}.pdf", "pdf") for c in "ab"])
    assert a != b


def test_discovery_says_what_it_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    labelled_pdf(tmp_path / "good.pdf", 1)
    (tmp_path / "gone.pdf").symlink_to(tmp_path / "missing.pdf")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "notes.txt").write_text("not a document\n")
    (tmp_path / "secret").mkdir()
    (tmp_path / "out").mkdir()
    labelled_pdf(tmp_path / "out" / "old.pdf", 1)
    real_scandir = os.scandir

    def scandir(path: str | os.PathLike[str] = ".") -> object:
        if str(path).endswith("secret"):  # root reads everything: deny it here instead
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    notes: list[str] = []
    docs, problems = discover([str(tmp_path)], exclude=[str(tmp_path / "out")], notes=notes)
    assert [d.rel for d in docs] == ["good"]
    assert any("gone.pdf: broken symbolic link" in p for p in problems)
    assert any("pipe.png: not a regular file (a FIFO" in p for p in problems)
    assert any("secret: cannot read folder (Permission denied)" in p for p in problems)
    assert len(problems) == 3  # notes.txt is not a document: left out without a word
    assert notes == [f"{tmp_path / 'out'}: skipped, it is the output folder"]


def test_glob_over_symlink_loops_is_quick(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    labelled_pdf(deep / "x.pdf", 1)
    for i in range(6):
        (deep / f"up{i}").symlink_to(tmp_path)
    docs, problems = discover([str(tmp_path / "**" / "*.pdf")])
    assert [d.rel for d in docs] == ["a/b/x"] and not problems
    docs, _ = discover([str(tmp_path / "*" / "b" / "*.pdf")])
    assert [d.rel for d in docs] == ["a/b/x"]


def test_binary_stdin_is_one_problem() -> None:
    docs, problems = discover(["-"], stdin=io.BytesIO(b"\x00\xff\x10" * 50))
    assert docs == [] and problems == [
        "<stdin>: neither a PDF or image nor a list of paths (binary)"
    ]


def test_stdin_spool_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    data = labelled_pdf(tmp_path / "in.pdf", 2).read_bytes()
    (tmp_path / "in.pdf").unlink()
    docs, _ = discover(["-"], stdin=io.BytesIO(data))
    assert list(tmp_path.iterdir()) == []  # already unlinked, read through /proc/PID/fd
    assert PageRenderer().render(docs[0], 1, 36).width > 0


def test_damage_words() -> None:
    assert page_damage("") is None
    assert page_damage("format error: non-page object in page tree\nPage tree load failed.") is None
    text = "format error: object is not a stream\ncannot load content stream part 1/20"
    assert page_damage(text) == "cannot load content stream part 1/20"


def test_truncated_pdf_pages_are_damaged(tmp_path: Path) -> None:
    make_pdf(tmp_path / "whole.pdf", [sample_text(20, seed=i) for i in range(5)], fontsize=11)
    data = (tmp_path / "whole.pdf").read_bytes()
    (tmp_path / "cut.pdf").write_bytes(data[: len(data) // 5])
    (tmp_path / "whole.pdf").unlink()
    (doc,) = discover([str(tmp_path / "cut.pdf")])[0]
    renderer = PageRenderer()
    assert renderer.render(doc, 0, 36).width > 0  # the first page survived
    with pytest.raises(InputError, match="damaged PDF"):
        renderer.render(doc, 1, 36)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    img = Image.new("RGB", (300, 100), "white")
    img.paste((0, 0, 0), (0, 0, 30, 30))  # a black corner top-left
    img.save(tmp_path / "p.jpg", exif=exif)
    (doc,) = discover([str(tmp_path / "p.jpg")])[0]
    page = PageRenderer().render(doc, 0)
    assert (page.width, page.height) == (100, 300)
    assert page.image.getpixel((90, 5))[0] < 60  # the corner is now top-right


@pytest.mark.parametrize("content", [b"[]", b"\xff\xfe", b'{"fingerprint": 1}', b"", b'"text"'])
def test_bad_state_files_are_ignored(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "d.done.json").write_bytes(content)
    assert not journal.done_matches(str(tmp_path / "d.done.json"), {"a": 1}, [])
    (tmp_path / "j.jsonl").write_bytes(content + b"\n" + content + b"\n")
    assert journal.read_journal(str(tmp_path / "j.jsonl"), {"a": 1}) == []


def test_journal_stops_at_an_invalid_utf8_line(tmp_path: Path) -> None:
    fp = {"a": 1}
    path = tmp_path / "j.jsonl"
    path.write_bytes(json.dumps({"fingerprint": fp}).encode() + b"\n" + b'{"x": "\xff"}\n')
    assert journal.read_journal(str(path), fp) == []


def test_lock_names_the_holder_and_waits(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    with locked_output(out):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}") as e, locked_output(out):
            pass
        assert e.value.exit_code == 5
    released = threading.Event()

    def hold() -> None:
        with locked_output(out):
            released.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.2)
    threading.Timer(0.3, released.set).start()
    with locked_output(out, wait=True):  # blocks until the holder lets go
        assert released.is_set()
    t.join()


def test_output_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError), locked_output(str(tmp_path / "f")):
        pass
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / ".ocrpress").write_text("x")
    with pytest.raises(OutputError), locked_output(str(tmp_path / "o")):
        pass


def test_output_guard_tells_the_folder_from_the_document(tmp_path: Path) -> None:
    (tmp_path / ".ocrpress").mkdir()
    with pytest.raises(OutputError, match="No space left"), output_guard(str(tmp_path)):
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(DocumentWriteError, match="cannot write"), output_guard(str(tmp_path)):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", "x/y.md")
    assert is_fatal_write_error(OSError(errno.EROFS, "ro")) and not is_fatal_write_error(
        PermissionError(errno.EACCES, "denied")
    )


def test_watch_process_sees_the_exit() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    seen = threading.Event()
    watch_process(child.pid, seen.set)
    child.wait()
    assert seen.wait(5)


def test_missing_extra_is_said_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from ocrpress.engines import EngineError, EngineOptions, create_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed, whatever the machine has
    with pytest.raises(EngineError, match=r"^--engine vllm needs the optional vllm package"):
        create_engine(EngineOptions(engine="vllm", model="/nowhere/model"))


def test_unknown_mode_is_a_usage_error() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ocrpress", "convert", "x.pdf", "--mode", "huge"],
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 2 and b"'huge' is not one of tiny, small" in r.stderr


def test_summary_names_what_failed() -> None:
    from ocrpress.stats import RunStats

    stats = RunStats(failed_documents=5, failed=[f"in/{c}.pdf" for c in "abcde"])
    assert "5 failed (in/a.pdf, in/b.pdf, in/c.pdf and 2 more)" in stats.summary()
    assert "0 failed in" in RunStats().summary()
