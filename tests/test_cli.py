"""The command line as a user (or a shell script) drives it: real processes, real pipes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pymupdf
import pytest
from docgen import cer, labelled_pdf, make_pdf, sample_text
from PIL import Image

TESTS = Path(__file__).parent
ECHO = "fake_engines:EchoEngine"
# labelled_pdf's pages have a text layer: --ocr always makes them reach the engine under test.
ECHO_ARGS = ("--engine", ECHO, "--ocr", "always")


def ocrpress(
    *args: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    full_env = {**os.environ, "PYTHONPATH": str(TESTS), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ocrpress", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


def test_version_and_help() -> None:
    r = ocrpress("--version")
    assert r.returncode == 0 and b"ocrpress, version" in r.stdout
    r = ocrpress("convert", "--help")
    assert r.returncode == 0
    for word in (b"--format", b"--pages", b"--engine", b"Examples:", b"--mode"):
        assert word in r.stdout


def test_rapid_end_to_end_real_text(tmp_path: Path) -> None:
    lines = sample_text(6, seed=3)
    truth = make_pdf(tmp_path / "letter.pdf", [lines], fontsize=14)[0]
    args = ["-f", "text", "--engine", "rapid", "--ocr", "always"]  # OCR despite the text layer
    r = ocrpress("convert", str(tmp_path / "letter.pdf"), *args)
    assert r.returncode == 0, r.stderr
    # PP-OCRv6 reads clean 14-pt text almost perfectly; 5% leaves room for punctuation slips.
    assert cer(truth, r.stdout.decode().replace("\f", "")) < 0.05
    assert b"1 document, 1 page, 0 failed" in r.stderr


def test_every_format_to_folder_mirrors_paths(tmp_path: Path) -> None:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    labelled_pdf(src / "a.pdf")
    Image.new("RGB", (300, 200), "white").save(src / "sub" / "b.png")
    out = tmp_path / "out"
    r = ocrpress("convert", str(src), "-o", str(out), "-f", "markdown,json,text", *ECHO_ARGS)
    assert r.returncode == 0, r.stderr
    for rel in ("a", "sub/b"):
        for ext in (".md", ".json", ".txt"):
            assert (out / (rel + ext)).is_file(), rel + ext
    doc = json.loads((out / "a.json").read_text())
    assert doc["schema"] == 2 and [p["page"] for p in doc["pages"]] == [1, 2]
    page = doc["pages"][0]
    assert (page["width"], page["height"], page["dpi"]) == (1190, 1684, 144)
    assert page["blocks"][0]["bbox"] == [0, 0, 1190, 1684]
    assert "<!-- page 2 -->" in (out / "a.md").read_text()
    assert "\f" in (out / "a.txt").read_text()
    assert json.loads((out / "_ocrpress_run.json").read_text())["pages"] == 3


def test_stdout_jsonl_and_pages(tmp_path: Path) -> None:
    pdf = labelled_pdf(tmp_path / "a.pdf", 5)
    r = ocrpress("convert", str(pdf), "-f", "json", "--pages", "2-3,5", *ECHO_ARGS)
    assert r.returncode == 0, r.stderr
    pages = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [p["page"] for p in pages] == [2, 3, 5]
    assert b"ocrpress:" not in r.stdout  # logs stay on stderr


def test_stdin_paths_and_bytes_and_pipe_out(tmp_path: Path) -> None:
    a, b = labelled_pdf(tmp_path / "a.pdf", 1), labelled_pdf(tmp_path / "b.pdf", 1)
    r = ocrpress("convert", "-", "-f", "text", *ECHO_ARGS, stdin=f"{a}\n{b}\n".encode())
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    assert text.index("a.pdf p1") < text.index("b.pdf p1") and text.count("\f") == 2
    r = ocrpress("convert", "-", "-f", "markdown", *ECHO_ARGS, stdin=a.read_bytes())
    assert r.returncode == 0, r.stderr
    # Named <stdin>, not by a temp file; a Markdown stream says where each page comes from.
    assert r.stdout.decode().startswith("<!-- <stdin> page 1 -->\n\n<stdin> p1 ")
    # Pipe the output of one ocrpress into another program, as shell scripts do.
    r2 = subprocess.run(["wc", "-l"], input=r.stdout, capture_output=True)
    assert int(r2.stdout) >= 1


def test_glob_is_expanded_by_ocrpress(tmp_path: Path) -> None:
    labelled_pdf(tmp_path / "x1.pdf", 1)
    labelled_pdf(tmp_path / "x2.pdf", 1)
    labelled_pdf(tmp_path / "y.pdf", 1)
    r = ocrpress("convert", str(tmp_path / "x*.pdf"), "-o", str(tmp_path / "o"), *ECHO_ARGS)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "o").glob("*.md")) == ["x1.md", "x2.md"]


def test_bad_inputs_one_line_each_batch_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    labelled_pdf(src / "good.pdf", 2)
    (src / "empty.pdf").write_bytes(b"")
    (src / "text.pdf").write_text("plain text pretending to be a PDF\n")
    (src / "broken.pdf").write_bytes(b"%PDF-1.5\n" + b"\x13\x37" * 200)
    enc = pymupdf.open()
    enc.new_page()
    enc.save(src / "locked.pdf", encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw="a", owner_pw="b")
    Image.effect_noise((300, 300), 50).convert("RGB").save(src / "full.jpg")
    data = (src / "full.jpg").read_bytes()
    (src / "cut.jpg").write_bytes(data[: len(data) // 3])
    (src / "full.jpg").unlink()
    out = tmp_path / "out"
    r = ocrpress("convert", str(src), "-o", str(out), "-f", "markdown,json", *ECHO_ARGS)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.decode().splitlines() if "error:" in ln]
    expected = {
        "empty.pdf": "empty file",
        "text.pdf": "not a PDF or image",
        "broken.pdf": "PDF",
        "locked.pdf": "encrypted",
        "cut.jpg": "truncated",
    }
    for name, words in expected.items():
        hits = [ln for ln in errors if name in ln]
        assert len(hits) == 1, (name, errors)
        assert words in hits[0], hits[0]
    produced = sorted(str(p.relative_to(out)) for p in out.glob("*") if p.is_file())
    assert produced == ["_ocrpress_run.json", "good.json", "good.md"]
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["convert", "/nonexistent/file.pdf"], 2),
        (["convert", "x.pdf", "-f", "docx"], 2),
        (["convert", "x.pdf", "-f", "json,text"], 2),  # stdout takes one format
        (["convert", "x.pdf", "--pages", "3-1"], 2),
        (["convert", "x.pdf", "--engine", "nosuchmodule:Engine"], 3),
    ],
)
def test_exit_codes(tmp_path: Path, args: list[str], code: int) -> None:
    labelled_pdf(tmp_path / "x.pdf", 1)
    r = ocrpress(*args, cwd=tmp_path)
    assert r.returncode == code, r.stderr
    # One line says what is wrong (click adds its usage hint above it for usage errors).
    last = r.stderr.decode().strip().splitlines()[-1]
    assert "rror" in last and len(r.stderr.decode().strip().splitlines()) <= 4


def test_quiet_prints_no_summary(tmp_path: Path) -> None:
    r = ocrpress("convert", str(labelled_pdf(tmp_path / "a.pdf", 1)), "-q", *ECHO_ARGS)
    assert r.returncode == 0 and r.stderr == b""


@pytest.mark.slow
def test_kill_9_then_resume_matches_clean_run(tmp_path: Path) -> None:
    files = [labelled_pdf(tmp_path / f"d{i}.pdf", 4) for i in range(3)]
    args = [str(f) for f in files] + ["-f", "markdown,json", *ECHO_ARGS, "-q"]
    clean = ocrpress("convert", *args, "-o", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "ECHO_DELAY": "0.15"}
    for delay in (1.2, 2.0, 2.6):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ocrpress",
                "convert",
                *args,
                "-o",
                str(out),
                "--batch-size",
                "1",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Whatever exists under a final name is complete: valid JSON with all its pages.
        for f in out.glob("*.json"):
            if f.name != "_ocrpress_run.json":
                assert len(json.loads(f.read_text())["pages"]) == 4
    r = ocrpress("convert", *args, "-o", str(out))
    assert r.returncode == 0, r.stderr
    for f in sorted((tmp_path / "clean").glob("d*.*")):
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    pdf = labelled_pdf(tmp_path / "a.pdf", 3)
    args = [sys.executable, "-m", "ocrpress", "convert", str(pdf), *ECHO_ARGS]
    args += ["-o", str(tmp_path / "o"), "--batch-size", "1"]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=60) == 0
    assert b"/3 [" in out and b"page/s]" in out  # tqdm's bar, on the terminal
    piped = ocrpress(*args[3:])
    assert piped.returncode == 0 and b"page/s]" not in piped.stderr  # no bar into a pipe


def test_a_failed_page_means_exit_1_and_is_retried_next_run(tmp_path: Path) -> None:
    pdf = labelled_pdf(tmp_path / "a.pdf", 3)
    out = tmp_path / "out"
    args = ["convert", str(pdf), "-o", str(out), "-f", "markdown", "--ocr", "always", "--engine"]
    r = ocrpress(*args, "fake_engines:FlakyEngine")
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.decode().splitlines() if "error:" in ln]
    assert len(errors) == 1 and "a.pdf: page 2: RuntimeError: model choked" in errors[0]
    md = (out / "a.md").read_text()
    assert "<!-- page 2: error: RuntimeError: model choked on this page -->" in md
    assert "a.pdf p3 " in md  # the pages around it were converted
    # Not marked done: the next run redoes only the failed page, and now it works.
    r = ocrpress(*args, ECHO)
    assert r.returncode == 0, r.stderr
    assert b"1 page" in r.stderr and b"2 pages resumed" in r.stderr
    assert "a.pdf p2 " in (out / "a.md").read_text()
