"""The fault corpus through the real CLI, and kills of a running CLI.

Every case (see faultgen.py) runs under a time limit and must give: the good document beside
it converted, one clear line naming the bad one, no traceback, the documented exit code, no
stray file (no temp file under -o, nothing left in the temp folder).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from docgen import labelled_pdf
from faultgen import CASES, NEEDS_NON_ROOT, Fault

TESTS = Path(__file__).parent
CASE_TIMEOUT_S = 120  # a hang fails the case instead of the suite
SUMMARY = re.compile(r"ocrpress: \d+ documents?, ")


def _cli(
    args: list[str],
    fault: Fault,
    out: Path,
    tmpdir: Path,
    preexec: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "TMPDIR": str(tmpdir), **fault.env}
    cmd = [sys.executable, "-m", "ocrpress", "convert", *args, "-o", str(out)]
    cmd += ["--engine", fault.engine, "--workers", "0", "--ocr", "always", *fault.extra]
    if fault.extra.count("--workers"):
        cmd = cmd[: cmd.index("--workers")] + cmd[cmd.index("--workers") + 2 :]
    return subprocess.run(
        cmd,
        input=fault.stdin,
        capture_output=True,
        env=env,
        timeout=CASE_TIMEOUT_S,
        preexec_fn=fault.preexec if preexec else None,
    )


def _files(out: Path) -> set[str]:
    """Everything under ``out`` but the state folder's contents, as relative paths."""
    if not out.is_dir():
        return set()
    found = set()
    for root, _dirs, names in os.walk(out):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), out)
            if not rel.startswith(".ocrpress" + os.sep):
                found.add(rel)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_fault(name: str, tmp_path: Path) -> None:
    if name in NEEDS_NON_ROOT and os.geteuid() == 0:
        pytest.skip("root reads any file: permissions cannot be denied")
    inp = tmp_path / "in"
    inp.mkdir()
    labelled_pdf(inp / "good.pdf", 2)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    fault = CASES[name](inp, tmp_path)
    out = fault.out or tmp_path / "out"
    args = fault.args if fault.args is not None else [str(inp)]
    try:
        if fault.prime is not None:
            first = _cli(args, fault, out, tmpdir, preexec=False)
            assert first.returncode == 0, first.stderr.decode(errors="replace")
            fault.prime(out)
        r = _cli(args, fault, out, tmpdir)
    finally:
        if fault.hold is not None:
            fault.hold.close()
    err = r.stderr.decode(errors="replace")
    assert "Traceback" not in err, err
    assert r.returncode == fault.code, err
    if fault.words:
        # The summary line at the end names failed documents too; it is not counted.
        lines = [ln for ln in err.splitlines() if not SUMMARY.match(ln)]
        naming = [ln for ln in lines if all(w in ln for w in fault.words)]
        assert naming, f"no line says {fault.words}:\n{err}"
        if fault.lines is not None:
            assert len(naming) == fault.lines, err
    if fault.good:
        assert "good.pdf p2" in (out / "good.md").read_text(), err
    if fault.files is not None:
        assert _files(out) == set(fault.files), err
    assert not [p for p in out.rglob("*") if p.name.startswith(".ocrpress-")], "temp file left"
    assert not list(tmpdir.iterdir()), "temp folder not cleaned"
    if fault.check is not None:
        fault.check(out)
    if fault.resumed is not None:
        again = _cli(args, fault, out, tmpdir, preexec=False)
        assert again.returncode == 0, again.stderr.decode(errors="replace")
        assert _files(out) == set(fault.resumed) | {"_ocrpress_run.json"}


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 40


# ------------------------------------------------------------------ kills


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry))
    return pids


def _wait_gone(pgid: int, seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while _group(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _group(pgid)


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_run_left_behind() -> Iterator[None]:
    """A test that fails (a timeout, an assertion) still leaves no run or worker behind."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        for pid in _group(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def _start(
    tmp_path: Path, *extra: str, stdin: bytes | None = None, delay: float = 0.1
) -> subprocess.Popen[bytes]:
    docs = [labelled_pdf(tmp_path / f"d{i}.pdf", 12) for i in range(2)]
    env = {**os.environ, "PYTHONPATH": str(TESTS), "ECHO_DELAY": str(delay)}
    env["TMPDIR"] = str(tmp_path)
    cmd = [sys.executable, "-m", "ocrpress", "convert", *map(str, docs), *extra]
    cmd += ["-o", str(tmp_path / "out"), "--engine", "fake_engines:EchoEngine", "--workers", "2"]
    cmd += ["--ocr", "always"]  # the fault handling is under test, not text-layer routing
    # Its own session: the test can look for every process of its group afterwards.
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _STARTED.append(proc)
    assert proc.stdin is not None
    proc.stdin.write(stdin or b"")
    proc.stdin.close()
    # Wait until pages are being journaled: the workers and the forkserver are running.
    journal = tmp_path / "out" / ".ocrpress" / "d0.journal.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and len(journal.read_bytes().splitlines()) > 2:
            break
        time.sleep(0.05)
    assert len(_group(proc.pid)) >= 3, "expected main, forkserver and workers"
    return proc


def _resume_cmd(tmp_path: Path, *extra: str) -> list[str]:
    """The command that converts d0.pdf into the same folder as _start's run."""
    out = str(tmp_path / "out")
    engine = ["--engine", "fake_engines:EchoEngine", "--ocr", "always", *extra]
    return [
        sys.executable,
        "-m",
        "ocrpress",
        "convert",
        str(tmp_path / "d0.pdf"),
        "-o",
        out,
        *engine,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_leaves_no_process(sig: signal.Signals, tmp_path: Path) -> None:
    proc = _start(tmp_path)
    os.kill(proc.pid, sig)  # the main process only: its helpers must notice by themselves
    proc.wait(timeout=30)
    try:
        assert _wait_gone(proc.pid) == []
    finally:
        for pid in _group(proc.pid):
            os.kill(pid, signal.SIGKILL)
    # Nothing in the temp folder either: not the forkserver's socket folder (pymp-*).
    left = [p for p in tmp_path.iterdir() if p.name.startswith(("pymp-", "ocrpress-"))]
    assert not left, [(p.name, sorted(os.listdir(p)) if p.is_dir() else None) for p in left]
    err = proc.stderr.read().decode() if proc.stderr else ""
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err
    # The same command again finishes the job from what was kept.
    done = subprocess.run(
        _resume_cmd(tmp_path, "-q"),
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0 and (tmp_path / "out" / "d0.md").is_file()


@pytest.mark.slow
def test_ctrl_c_is_one_line(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    proc.wait(timeout=30)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "ocrpress: error: interrupted; finished pages are kept, run the same command again"
        " to resume"
    ]
    assert _wait_gone(proc.pid) == []


@pytest.mark.slow
def test_stdin_spool_gone_after_kill(tmp_path: Path) -> None:
    data = labelled_pdf(tmp_path / "piped.pdf", 12).read_bytes()
    proc = _start(tmp_path, "-", stdin=data)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _wait_gone(proc.pid) == []
    assert not list(tmp_path.glob("ocrpress-stdin-*"))


@pytest.mark.slow
def test_second_run_into_a_locked_folder(tmp_path: Path) -> None:
    proc = _start(tmp_path, delay=0.3)  # still running when the second run starts
    try:
        r = subprocess.run(
            _resume_cmd(tmp_path),
            env={**os.environ, "PYTHONPATH": str(TESTS)},
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 5 and f"(pid {proc.pid})".encode() in r.stderr, r.stderr
        waited = subprocess.Popen(
            _resume_cmd(tmp_path, "--wait"),
            env={**os.environ, "PYTHONPATH": str(TESTS)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.wait(timeout=120) == 0
        assert waited.wait(timeout=120) == 0
        assert waited.stderr is not None and b"Traceback" not in waited.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


# ------------------------------------------------------------------ dying render workers


@pytest.mark.slow
def test_render_queue_isolates_the_page_that_kills_workers(tmp_path: Path) -> None:
    from concurrent.futures import wait

    from fake_engines import crash_render

    from ocrpress.inputs import discover
    from ocrpress.render import CRASH_ERROR, RenderQueue

    paths = [labelled_pdf(tmp_path / n, 3) for n in ("a.pdf", "crash.pdf", "c.pdf")]
    docs, _ = discover([str(p) for p in paths])
    queue = RenderQueue(2, 36, task=crash_render)
    done: dict[tuple[str, int], object] = {}
    try:
        for doc in docs:
            for i in range(3):
                queue.submit((doc.rel, i), doc, i)
        deadline = time.monotonic() + 120
        while len(queue) and time.monotonic() < deadline:
            done.update(queue.ready())
            if queue.head() is not None:
                wait([queue.head()], timeout=1)
    finally:
        queue.close()
    assert done.pop(("crash", 0)) == CRASH_ERROR
    # Every other page, including those in flight beside the crash, was rendered.
    assert sorted(done) == [
        (d, i) for d in ("a", "c", "crash") for i in range(3) if (d, i) != ("crash", 0)
    ]
    assert all(not isinstance(v, str) for v in done.values())


def test_a_page_that_cannot_be_spooled_is_its_own_error(tmp_path: Path) -> None:
    """A worker that cannot write its page (no room left in the temporary folder) fails that
    page with one line, not the run."""
    from concurrent.futures import wait

    from ocrpress.inputs import discover
    from ocrpress.render import RenderQueue

    docs, _ = discover([str(labelled_pdf(tmp_path / "a.pdf", 2))])
    queue = RenderQueue(1, 36)
    done: dict[int, object] = {}
    try:
        spool, queue.spool = queue.spool, str(tmp_path / "gone")  # the writes fail
        queue.submit(0, docs[0], 0)
        wait([queue.head()], timeout=60)
        done.update(queue.ready())
        queue.spool = spool
        queue.submit(1, docs[0], 1)
        wait([queue.head()], timeout=60)
        done.update(queue.ready())
    finally:
        queue.close()
    assert isinstance(done[0], str) and done[0].startswith("cannot render (")
    assert "gone" in done[0]
    assert not isinstance(done[1], str)  # the next page renders as usual


def test_a_page_spooled_halfway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk mid-write: neither the half-written page nor its prepared inputs stay."""
    import errno
    import pickle

    from PIL import Image

    from ocrpress import render
    from ocrpress.document import PageImage
    from ocrpress.engines.page_inputs import InputsRecipe, PreparedFile

    inputs = tmp_path / "inputs-1.pt"
    inputs.write_bytes(b"tensors")
    recipe = InputsRecipe("v2", "m", "p", 2, 6, "float32", "small", False)
    page = PageImage("a.pdf", 0, Image.new("RGB", (8, 8)), 72.0)
    page.prepared = PreparedFile(str(inputs), recipe, "small")

    def full(obj, f, protocol=None):
        f.write(b"half a page")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pickle, "dump", full)
    with pytest.raises(OSError):
        render.spooled_call(lambda doc: page, str(tmp_path), None)
    assert list(tmp_path.iterdir()) == []


def _workers_of(main_pid: int) -> list[int]:
    """Render workers: children of the forkserver, itself a child of the main process."""

    def children(pid: int) -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if entry.isdigit() and int(fields[1]) == pid:
                found.append(int(entry))
        return found

    return [w for c in children(main_pid) for w in children(c)]


@pytest.mark.slow
def test_killed_render_worker_does_not_fail_the_run(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    workers = _workers_of(proc.pid)
    assert workers, "no render worker found"
    os.kill(workers[0], signal.SIGKILL)  # as the OOM killer would
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    md = (tmp_path / "out" / "d1.md").read_text()
    assert "d1.pdf p12" in md and "error" not in md
    assert _wait_gone(proc.pid) == []


@pytest.mark.slow
def test_folder_named_ocrpress_in_cwd(tmp_path: Path) -> None:
    """A checkout's ``ocrpress/`` in the cwd must not shadow the package in render workers."""
    script = Path(sys.executable).with_name("ocrpress")
    if not script.exists():
        pytest.skip("needs the installed console script (python -m puts the cwd first anyway)")
    (tmp_path / "ocrpress").mkdir()
    (tmp_path / "ocrpress" / "__init__.py").write_text("")  # an empty package of that name
    labelled_pdf(tmp_path / "a.pdf", 2)
    cmd = [str(script), "convert", "a.pdf", "-o", "out", "--engine", "fake_engines:EchoEngine"]
    cmd += ["--ocr", "always"]
    r = subprocess.run(
        [*cmd, "--workers", "1"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr.decode()
    assert "a.pdf p2" in (tmp_path / "out" / "a.md").read_text()


def test_render_results_cross_the_pipe_in_one_atomic_write(tmp_path: Path) -> None:
    """A worker killed mid-send must not leave half a page in the result pipe (that hangs
    ProcessPoolExecutor's reader forever): pages go through a file, only a handle is sent."""
    import pickle
    import select

    from ocrpress.inputs import discover
    from ocrpress.render import Spooled, render_task, spooled_call

    docs, _ = discover([str(labelled_pdf(tmp_path / "a.pdf", 1))])
    handle = spooled_call(render_task, str(tmp_path), docs[0], 0, 150, "always")
    assert isinstance(handle, Spooled)
    # What the executor sends is a (work id, exception, result) item around the handle.
    assert len(pickle.dumps((12345, None, handle))) < select.PIPE_BUF
    page = handle.load()
    assert page.image.width > 1000  # the whole 150 dpi page came back through the file
    assert list(tmp_path.iterdir()) == [tmp_path / "a.pdf"]  # and the file is gone
