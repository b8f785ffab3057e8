"""`actstore tour PATH` refuses, in one line and before any work, a PATH it cannot use."""

from actstore.cli import main

from ..readonly import read_only_copy


def test_tour_into_a_file_or_a_read_only_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert main(["tour", str(tmp_path / "notes.txt"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.txt' is a file; pass a folder" in err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert main(["tour", str(tmp_path / "t"), "--n-rows", "1", "--quiet"]) == 2
    assert "at least 2 rows" in capsys.readouterr().err and not (tmp_path / "t").exists()
    (tmp_path / "folder").mkdir()
    with read_only_copy(tmp_path / "folder") as ro:
        assert main(["tour", str(ro / "demo_out"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Cannot write the tour's stores and figures" in err
