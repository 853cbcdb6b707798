"""The hand-written tar reader against Python's tarfile, on every header flavour and on broken tars."""

import io
import tarfile

import pytest

from polymodal.data.formats.tars import key_and_extension, tar_samples

LONG = "folder/" + "x" * 150  # past ustar's 100-character name field


def _tar(path, members, fmt):
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data or b""))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "elsewhere"
        tar.addfile(link)
    return str(path)


def _read(url, **kw):
    errors = []
    samples = list(tar_samples(url, lambda where, why: errors.append((where, why)), kw.pop("max_bytes", 2**20), **kw))
    return samples, errors


MEMBERS = [(f"{LONG}.png", b"p" * 700), (f"{LONG}.json", b"{}"), ("dir", None), ("café.seg.PNG", b"q" * 3),
           ("café.txt", b"hi"), ("b/2.txt", b"")]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_every_header_flavour_reads_as_tarfile_does(tmp_path, fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else MEMBERS[2:]  # ustar has no long names
    samples, errors = _read(_tar(tmp_path / "s.tar", members, fmt))
    expected = {}
    for name, data in members:
        key, ext = key_and_extension(name)
        if data is not None and key is not None:
            expected.setdefault(key, {})[ext.lower()] = data
    assert errors == [] and dict(samples) == expected
    assert [k for k, _ in samples] == list(expected)  # tar order, one entry per sample


def test_large_members_are_skipped_unread_and_unwanted_ones_left_out(tmp_path):
    url = _tar(tmp_path / "s.tar", [("a.png", b"p" * 5000), ("a.txt", b"cap"), ("b.png", b"p")], tarfile.GNU_FORMAT)
    samples, _ = _read(url, max_bytes=1000)
    assert samples == [("a", {"png": None, "txt": b"cap"}), ("b", {"png": b"p"})]
    samples, _ = _read(url, wanted=lambda name: name.endswith(".txt"))
    assert samples == [("a", {"txt": b"cap"}), ("b", {})]


def test_a_broken_tar_is_reported_once_and_keeps_what_came_before(tmp_path):
    good = _tar(tmp_path / "s.tar", [(f"{i}.png", b"p" * 600) for i in range(4)], tarfile.GNU_FORMAT)
    raw = open(good, "rb").read()
    (tmp_path / "cut.tar").write_bytes(raw[:3 * 1536 + 700])  # inside the fourth member's data
    samples, errors = _read(str(tmp_path / "cut.tar"))
    assert [k for k, _ in samples] == ["0", "1"]  # "2" is dropped: the break may have cut it off
    assert len(errors) == 1 and "cut short" in errors[0][1] and errors[0][0].endswith("cut.tar")
    flipped = bytearray(raw)
    flipped[1536 + 10] ^= 1  # a name byte of the second header: its checksum no longer matches
    (tmp_path / "bad.tar").write_bytes(bytes(flipped))
    samples, errors = _read(str(tmp_path / "bad.tar"))
    assert samples == [] and "checksum" in errors[0][1]
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    assert _read(str(tmp_path / "junk.tar"))[1][0][1].startswith("unreadable shard")
