import shutil
from pathlib import Path

import pytest

from amhelpers import corpus


def test_lines_and_deterministic_split(hornmt_dir):
    amh, eng = corpus.lines("amh"), corpus.lines("eng")
    assert len(amh) == len(eng) == corpus.N_LINES
    splits = [corpus.split_of(i) for i in range(corpus.N_LINES)]
    assert splits.count("test") == splits.count("val") == 203
    assert [corpus.split_of(i) for i in range(corpus.N_LINES)] == splits
    # a line and its translation share a split: the test split is the same line numbers
    test_idx = [i for i, s in enumerate(splits) if s == "test"]
    assert corpus.split_lines("amh", "test")[0] == amh[test_idx[0]]
    assert corpus.split_lines("eng", "test")[0] == eng[test_idx[0]]


def test_unknown_language_and_split(hornmt_dir):
    with pytest.raises(ValueError, match="unknown HornMT language 'xx'"):
        corpus.lines("xx")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        corpus.split_lines("amh", "dev")


def test_split_phrases_ethiopic_punctuation_and_sizes():
    line = "አንድ ሁለት ሶስት አራት፣ አምስት ስድስት ሰባት ስምንት ዘጠኝ አስር አስራ አንድ አስራ ሁለት። ሰላም ነው"
    out = corpus.split_phrases(line)
    assert out[0] == "አንድ ሁለት ሶስት አራት፣"
    assert all(1 <= len(p.split()) <= 6 for p in out)
    assert " ".join(out).split() == line.split()
    assert corpus.split_phrases("ሰላም።ነው") == ["ሰላም። ነው"]  # split at ። even without a space
    assert corpus.split_phrases("It costs 3.5 dollars") == ["It costs 3.5 dollars"]


def test_phrases_are_short(hornmt_dir):
    ph = corpus.phrases("eng", "val")
    assert len(ph) > 500
    assert max(len(p.split()) for p in ph) <= 6


def _fake_repo(tmp_path: Path, hornmt_dir: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    shutil.copy(hornmt_dir / "amh.txt", repo / "data" / "amh.txt")
    return repo


def test_download_once_with_checksum(hornmt_dir, tmp_path, monkeypatch, work_home):
    repo = _fake_repo(tmp_path, hornmt_dir)
    monkeypatch.delenv("AMHELPERS_CORPUS_DIR")
    monkeypatch.setenv("AMHELPERS_CORPUS_URL", repo.as_uri())
    path = corpus.path("amh.txt")
    assert path == work_home / "hornmt" / "amh.txt" and path.is_file()
    (repo / "data" / "amh.txt").unlink()  # the second call must not download again
    assert corpus.path("amh.txt") == path


def test_corrupt_download_leaves_nothing(hornmt_dir, tmp_path, monkeypatch, work_home):
    repo = _fake_repo(tmp_path, hornmt_dir)
    (repo / "data" / "amh.txt").write_text("not hornmt\n", encoding="utf-8")
    monkeypatch.delenv("AMHELPERS_CORPUS_DIR")
    monkeypatch.setenv("AMHELPERS_CORPUS_URL", repo.as_uri())
    with pytest.raises(ValueError, match="sha256 .* does not match"):
        corpus.path("amh.txt")
    assert not list((work_home / "hornmt").iterdir())


def test_offline_without_copy_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.delenv("AMHELPERS_CORPUS_DIR", raising=False)
    monkeypatch.setenv("AMHELPERS_CORPUS_URL", (tmp_path / "nowhere").as_uri())
    with pytest.raises(FileNotFoundError, match="AMHELPERS_CORPUS_DIR"):
        corpus.path("eng.txt")


def test_local_copy_missing_file_or_modified(hornmt_dir, tmp_path, monkeypatch):
    local = tmp_path / "local"
    local.mkdir()
    monkeypatch.setenv("AMHELPERS_CORPUS_DIR", str(local))
    with pytest.raises(FileNotFoundError, match="has no amh.txt"):
        corpus.path("amh.txt")
    (local / "amh.txt").write_bytes((hornmt_dir / "amh.txt").read_bytes() + b"x")
    with pytest.raises(ValueError, match=r"amh.txt: sha256"):
        corpus.path("amh.txt")
