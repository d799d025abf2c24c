"""pipeline/storage.py: a write that fails for lack of space leaves the old file and no temporary
one, a log line is appended whole or not at all, and the error is one line naming the file. Faults
are injected where the module opens its files, part-way through a write (a real full disk:
tests/integration/test_storage_faults.py)."""
import errno

import pytest

from pipeline import storage

from helpers import full_disk_after


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    storage.write_text(path, "old")
    monkeypatch.setattr(storage, "_open", full_disk_after(10, "results.json.tmp"))
    with pytest.raises(storage.StorageError) as e:
        storage.write_text(path, "x" * 100)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert str(e.value) == f"results.json not written (no space left on device: {tmp_path})"
    assert "\n" not in str(e.value)
    done = e.value.finished_by("the checkpoint of iteration 40 is intact", "metatrain resume RUN")
    assert str(done).endswith("; the checkpoint of iteration 40 is intact; once space is freed: metatrain resume RUN")


def test_an_appended_line_is_whole_or_absent(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    storage.append_line(path, '{"iteration": 10}')
    monkeypatch.setattr(storage, "_open", full_disk_after(5, "metrics.jsonl"))
    with pytest.raises(storage.StorageError, match=r"^metrics.jsonl not written \(no space left on device"):
        storage.append_line(path, '{"iteration": 20, "meta_loss": 1.0}')
    assert path.read_text() == '{"iteration": 10}\n'


@pytest.mark.parametrize("code,words", [(errno.EIO, "I/O error"), (errno.EDQUOT, "disk quota exceeded")])
def test_other_storage_faults_are_one_line_and_other_errors_pass_through(tmp_path, monkeypatch, code, words):
    monkeypatch.setattr(storage, "_open", full_disk_after(0, "a.txt.tmp", code))
    with pytest.raises(storage.StorageError, match=words):
        storage.write_text(tmp_path / "a.txt", "abc")
    monkeypatch.setattr(storage, "_open", full_disk_after(0, "a.txt.tmp", errno.EACCES))
    with pytest.raises(PermissionError):
        storage.write_text(tmp_path / "a.txt", "abc")
    assert list(tmp_path.iterdir()) == []


def test_the_injected_file_fails_part_way(tmp_path):
    f = full_disk_after(3, "x")(tmp_path / "x", "w")
    f.write("ab")
    with pytest.raises(OSError):
        f.write("cd")
    f.close()
    assert (tmp_path / "x").read_text() == "abc"  # the disk took what fit


def test_a_writer_that_fails_otherwise_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.png"
    storage.write_text(path, "old")

    def broken(f):
        f.write("half")
        raise ValueError("cannot draw")

    with pytest.raises(ValueError, match="cannot draw"):
        storage.write_file(path, broken)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.png"]
