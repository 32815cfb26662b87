"""`jobkit lab save DIR` / `jobkit lab load DIR` on a real (small) lab image: the tarballs are
named by their hashes, load checks them before it loads anything, refuses a damaged or foreign
one with one line (exit 2), really loads a missing image, and leaves `lab build` a cache hit."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import uuid
from pathlib import Path

import pytest

from jobkit import cli
from jobkit.lab.build import HASH_LABEL, build, image_id, image_label
from jobkit.lab.carry import MANIFEST, load, save
from jobkit.lab.targets import load_manifest

pytestmark = [pytest.mark.container, pytest.mark.slow]
TARGET = "busybox"  # the smallest lab image (its base, debian bookworm, travels with it)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build(TARGET)
    d = tmp_path_factory.mktemp("carry")
    assert cli.main(["lab", "save", str(d), TARGET]) == 0
    return d


def test_save_names_each_tarball_by_its_hash_and_writes_a_manifest(saved: Path) -> None:
    t = load_manifest()[TARGET]
    data = json.loads((saved / MANIFEST).read_text())
    assert data["version"] == 1
    kinds = {e["kind"]: e for e in data["images"]}
    digest = image_label(t.image, HASH_LABEL)
    assert kinds["target"]["file"] == f"{TARGET}-{digest}.tar"
    assert kinds["target"]["hash"] == digest
    assert kinds["base"]["image"] == t.base_image
    assert kinds["base"]["hash"] == image_id(str(t.base_image))
    assert sorted(p.name for p in saved.iterdir()) == sorted([MANIFEST, kinds["target"]["file"],
                                                             kinds["base"]["file"]])


def test_load_of_what_is_here_is_up_to_date_and_build_is_a_cache_hit(saved: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", "load", str(saved)]) == 0
    assert "up to date" in capsys.readouterr().out
    assert build(TARGET).built is False


def test_load_really_loads_a_missing_image(saved: Path, tmp_path: Path) -> None:
    # A target of our own whose image is a tag this test creates (never a shared image removed).
    real = load_manifest()[TARGET]
    mine = dataclasses.replace(real, name="carrytest", image=f"jobkit-carrytest:{uuid.uuid4().hex[:8]}")
    subprocess.run(["docker", "tag", real.image, mine.image], check=True)
    try:
        save(tmp_path, ["carrytest"], targets={"carrytest": mine}, say=lambda _: None)
        subprocess.run(["docker", "image", "rm", mine.image], check=True, capture_output=True)
        assert image_id(mine.image) is None
        done = load(tmp_path, targets={"carrytest": mine}, say=lambda _: None)
        assert [(e.kind, what) for e, what in done] == [("base", "up to date"), ("target", "loaded")]
        assert image_label(mine.image, HASH_LABEL) == image_label(real.image, HASH_LABEL)
    finally:
        subprocess.run(["docker", "image", "rm", mine.image], check=False, capture_output=True)


def _copy(saved: Path, to: Path) -> Path:
    to.mkdir()
    for p in saved.iterdir():
        (to / p.name).hardlink_to(p) if p.suffix == ".tar" else (to / p.name).write_bytes(p.read_bytes())
    return to


def test_a_damaged_tarball_is_refused_with_one_line_before_anything_loads(saved: Path, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy(saved, tmp_path / "d")
    data = json.loads((d / MANIFEST).read_text())
    target = next(e for e in data["images"] if e["kind"] == "target")
    (d / target["file"]).unlink()  # a copy of our own to damage, not the saved one
    data_bytes = bytearray((saved / target["file"]).read_bytes())
    data_bytes[len(data_bytes) // 2] ^= 0xFF  # one byte flipped in the middle
    (d / target["file"]).write_bytes(bytes(data_bytes))
    assert cli.main(["lab", "load", str(d)]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("lab: checking")]
    assert len(err) == 1, err
    assert err[-1].startswith("jobkit: error: ")
    assert "does not match" in err[-1]
    assert "refused" in err[-1]


def test_a_tarball_of_other_inputs_is_refused(saved: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    d = _copy(saved, tmp_path / "d")
    data = json.loads((d / MANIFEST).read_text())
    target = next(e for e in data["images"] if e["kind"] == "target")
    other = "0" * 20
    (d / target["file"]).rename(d / f"{TARGET}-{other}.tar")
    target["file"], target["hash"] = f"{TARGET}-{other}.tar", other
    (d / MANIFEST).write_text(json.dumps(data))
    assert cli.main(["lab", "load", str(d)]) == 2
    err = capsys.readouterr().err
    assert "is not this checkout's" in err
    assert "Traceback" not in err


def test_load_of_a_directory_without_a_manifest_is_a_usage_error(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", "load", str(tmp_path)]) == 2
    assert "holds no jobkit-lab.json" in capsys.readouterr().err


def test_save_checks_its_input_before_writing_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["lab", "save", str(tmp_path / "out"), "nosuch"]) == 2
    assert "unknown lab target 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert cli.main(["lab", "save", "/proc/nope", TARGET]) == 2
    assert capsys.readouterr().err.startswith("jobkit: error: cannot write to /proc/nope")
