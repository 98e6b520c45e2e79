"""Safe output (fuzz/output.py and every writer that uses it): output paths are checked before
the run, only regular files and new names are replaced (atomically), devices and FIFOs are
written through, symlinks are refused, files get the umask's mode, and a full disk or a
read-only directory is one line and exit 2 with the summary still printed."""
import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest

import fuzz.output as output
from fuzz.cli import main

ROOT = Path(__file__).resolve().parent.parent
PLAIN_TRACE = {"schema": "memslot-fuzz-trace/1", "events": [
    {"op": "set_memory_region", "as_id": 0, "slot": 0, "flags": 0, "guest_phys_addr": "0x100000",
     "memory_size": "0x4000", "userspace_addr": "0x7f0000000000"},
    {"op": "test_young", "hva": "0x7f0000100000"}]}


def run_cli(*args):
    return main([str(a) for a in args])


def short_run(tmp_path, *extra):
    """A one-second arm64 run (v5.12 vs v5.13 finds known divergences at once)."""
    return run_cli("run", "--arch", "arm64", "--max-time", 1, "--seed", 5, "--quiet",
                   "--minimize-seconds", 1, "--out", tmp_path / "out", *extra)


def one_line(err: str) -> str:
    err = err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def char_device(tmp_path: Path, name: str, major: int, minor: int) -> Path:
    """A character device node in tmp_path (root), or the system's (others cannot replace it)."""
    if os.geteuid() != 0:
        system = Path("/dev") / name
        if not system.exists():
            pytest.skip(f"/dev/{name} missing and not root")
        return system
    node = tmp_path / name
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    return node


class FifoReader(threading.Thread):
    """Reads a FIFO to its end (the writer's close) in the background."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.data = path, b""

    def run(self):
        with open(self.path, "rb") as f:
            self.data = f.read()


def fail_in(monkeypatch, directory: Path, code: int):
    """Creating a file under `directory` fails with `code` (EROFS, EACCES): root ignores
    directory permissions, so a read-only directory is simulated at os.open."""
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).resolve().is_relative_to(directory.resolve()):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", fake_open)


# ----- devices, FIFOs, symlinks ---------------------------------------------------------------
def test_a_device_node_passed_as_report_is_written_through_not_replaced(tmp_path, capsys):
    node = char_device(tmp_path, "null", 1, 3)
    before = os.lstat(node)
    rc = short_run(tmp_path, "--report", node)
    after = os.lstat(node)
    assert rc in (0, 1)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert "total:" in capsys.readouterr().out


def test_a_fifo_passed_as_report_receives_the_report(tmp_path):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    reader.start()
    rc = short_run(tmp_path, "--report", fifo)
    reader.join(timeout=30)
    assert rc in (0, 1) and not reader.is_alive()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    doc = json.loads(reader.data)
    assert doc["totals"]["events"] > 0 and doc["runs"][0]["arch"] == "arm64"


def test_show_html_into_a_fifo_is_written_through(tmp_path):
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(PLAIN_TRACE))
    fifo = tmp_path / "page.fifo"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    reader.start()
    assert run_cli("show", trace, "--html", fifo) == 0
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and b"<svg" in reader.data


@pytest.mark.parametrize("command", ["run", "show"])
def test_a_symlink_is_refused_before_anything_runs_and_its_target_is_untouched(tmp_path, capsys, command):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    if command == "run":
        rc, option = short_run(tmp_path, "--report", link), "--report"
    else:
        trace = tmp_path / "t.json"
        trace.write_text(json.dumps(PLAIN_TRACE))
        rc, option = run_cli("show", trace, "--html", link), "--html"
    err = one_line(capsys.readouterr().err)
    assert rc == 2 and err.startswith(f"memslot-fuzz: {option} {link}: is a symbolic link")
    assert link.is_symlink() and target.read_text() == "keep me"
    assert not (tmp_path / "out" / "arm64").exists()        # refused before the run started


def test_a_symlink_that_appears_after_the_check_is_still_refused(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    path = tmp_path / "r.json"
    output.check_file(path, "--report")
    path.symlink_to(target)
    with pytest.raises(output.OutputError, match="is a symbolic link"):
        output.write_text(path, "{}", "--report")
    assert path.is_symlink() and target.read_text() == "keep me"


def test_a_regular_file_is_replaced_atomically_without_leftovers(tmp_path):
    path = tmp_path / "r.json"
    path.write_text("old")
    hard = tmp_path / "hard.json"
    os.link(path, hard)
    output.write_text(path, "new")
    assert path.read_text() == "new" and hard.read_text() == "old"     # a new inode, renamed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.json", "r.json"]


def test_a_directory_is_not_a_report(tmp_path, capsys):
    assert short_run(tmp_path, "--report", tmp_path) == 2
    assert one_line(capsys.readouterr().err).endswith(f"--report {tmp_path}: is a directory")


# ----- modes ----------------------------------------------------------------------------------
@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_every_file_of_a_run_gets_the_umask_mode(tmp_path, umask_027):
    report = tmp_path / "r.json"
    assert short_run(tmp_path, "--report", report) in (0, 1)
    written = [report] + [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.suffix == ".svg" for p in written) and any(p.suffix == ".json" for p in written[1:])
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {oct(0o640)}


def test_show_html_gets_the_umask_mode(tmp_path, umask_027):
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps(PLAIN_TRACE))
    page = tmp_path / "page.html"
    assert run_cli("show", trace, "--html", page) == 0
    assert stat.S_IMODE(page.stat().st_mode) == 0o640


# ----- paths checked before the run -------------------------------------------------------------
def test_out_naming_a_file_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert run_cli("run", "--arch", "arm64", "--max-time", 1, "--out", f, "--quiet") == 2
    assert one_line(capsys.readouterr().err) == f"memslot-fuzz: --out {f}: not a directory"
    assert f.read_text() == "x"


@pytest.mark.parametrize("option", ["--report", "--out"])
def test_a_path_under_proc_is_refused_before_the_run(tmp_path, capsys, option):
    value = "/proc/memslot-fuzz-report.json" if option == "--report" else "/proc/memslot-fuzz-out"
    rc = run_cli("run", "--arch", "arm64", "--max-time", 1, "--quiet",
                 *(["--out", tmp_path / "out"] if option == "--report" else []), option, value)
    err = one_line(capsys.readouterr().err)
    assert rc == 2 and err.startswith(f"memslot-fuzz: {option} {value}: cannot create")


def test_a_report_in_a_missing_directory_is_refused(tmp_path, capsys):
    assert short_run(tmp_path, "--report", tmp_path / "nowhere" / "r.json") == 2
    assert "directory" in one_line(capsys.readouterr().err) and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied")])
def test_a_read_only_report_directory_is_refused_before_the_run(tmp_path, capsys, monkeypatch, code, words):
    ro = tmp_path / "ro"
    ro.mkdir()
    fail_in(monkeypatch, ro, code)
    assert short_run(tmp_path, "--report", ro / "r.json") == 2
    err = one_line(capsys.readouterr().err)
    assert err == f"memslot-fuzz: --report {ro / 'r.json'}: cannot create a file in {ro}: {words}"
    assert not (tmp_path / "out" / "arm64").exists() and list(ro.iterdir()) == []


def test_a_read_only_out_directory_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    fail_in(monkeypatch, tmp_path / "out", errno.EROFS)
    assert short_run(tmp_path) == 2
    assert one_line(capsys.readouterr().err).endswith("read-only file system")


# ----- disk full ------------------------------------------------------------------------------
def test_a_full_disk_for_the_report_keeps_the_summary_and_the_findings(tmp_path, capsys):
    full = char_device(tmp_path, "full", 1, 7)
    before = os.lstat(full)
    rc = short_run(tmp_path, "--report", full)
    out, err = capsys.readouterr()
    assert rc == 2
    assert err.strip().splitlines()[-1] == f"memslot-fuzz: --report {full}: cannot write: no space left on device"
    assert "Traceback" not in err and "total:" in out and "distinct divergences" in out
    saved = list((tmp_path / "out" / "arm64").glob("*.json"))
    assert saved and all(str(p) in out for p in saved)       # the summary names what is kept
    after = os.lstat(full)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev


def test_a_disk_that_fills_during_the_run_ends_it_with_what_was_saved(tmp_path, capsys, monkeypatch):
    """The third fsync (the third divergence's file) fails with ENOSPC: the run stops, the two
    files already saved stay, the summary lists them, and the error is the last line."""
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    rc = short_run(tmp_path)
    out, err = capsys.readouterr()
    saved = sorted((tmp_path / "out" / "arm64").glob("*.json"))
    assert rc == 2 and len(saved) == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("memslot-fuzz: ") and last.endswith("cannot save: no space left on device")
    assert "Traceback" not in err and "2 distinct divergences" in out
    assert all(str(p) in out for p in saved)
    assert not [p for p in (tmp_path / "out").rglob(".*")]      # no temporary files left behind
