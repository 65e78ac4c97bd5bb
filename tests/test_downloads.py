"""Third-party model files: the lookup chain (given path, $FERKERAS_WEIGHTS, the cache, a download),
the download itself on local file:// addresses (never the network), and its size / sha256 check."""
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from ferkeras.deploy.downloads import YUNET, file_sha256, model_file_path, search_dirs, weights_cache_dir
from ferkeras.errors import UserError
from tests.helpers import faint_noise

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def places(tmp_path, monkeypatch, yunet_model):
    """Empty weights and cache folders of this test's own, and a local copy of the published file."""
    monkeypatch.setenv("FERKERAS_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("FERKERAS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FERKERAS_NO_DOWNLOAD")
    published = tmp_path / "server" / YUNET.name
    published.parent.mkdir()
    published.write_bytes(yunet_model.read_bytes())
    return {"weights": tmp_path / "weights", "cache": tmp_path / "cache" / "weights", "published": published,
            "spec": dataclasses.replace(YUNET, url=published.as_uri())}


def test_the_chain_takes_the_given_path_then_weights_then_cache_then_downloads(places, tmp_path):
    spec = places["spec"]
    assert search_dirs() == [places["weights"], places["cache"]] and weights_cache_dir() == places["cache"]
    # Nothing anywhere: downloaded once into the cache, and found there afterwards.
    got = model_file_path(spec)
    assert got == places["cache"] / YUNET.name and file_sha256(got) == YUNET.sha256
    assert sorted(p.name for p in places["cache"].iterdir()) == [YUNET.name]  # no temporary file left
    places["published"].unlink()  # a second lookup must not download again
    assert model_file_path(spec) == got
    # $FERKERAS_WEIGHTS comes before the cache.
    places["weights"].mkdir()
    (places["weights"] / YUNET.name).write_bytes(got.read_bytes())
    assert model_file_path(spec) == places["weights"] / YUNET.name
    # A given path wins over both, and is used as it is (any YuNet version the user chooses).
    mine = tmp_path / "my-yunet.onnx"
    mine.write_bytes(b"whatever the user trained")
    assert model_file_path(spec, given=mine) == mine
    with pytest.raises(UserError, match=r"absent.onnx: no such file; --detector_model expects"):
        model_file_path(spec, given=tmp_path / "absent.onnx")


def test_a_corrupted_download_is_refused_and_leaves_nothing(places):
    data = bytearray(places["published"].read_bytes())
    data[1000] ^= 0xFF
    places["published"].write_bytes(bytes(data))
    with pytest.raises(UserError) as caught:
        model_file_path(places["spec"])
    message = str(caught.value)
    assert message.startswith(f"{places['spec'].url}: the download is not the published {YUNET.name}")
    assert f"sha256 {file_sha256(places['published'])[:12]}" in message and "nothing was kept" in message
    assert "\n" not in message
    assert not places["cache"].exists() or list(places["cache"].iterdir()) == []


def test_an_oversized_or_missing_download_is_refused(places):
    places["published"].write_bytes(places["published"].read_bytes() * 4)
    with pytest.raises(UserError, match="the download is not the published") as caught:
        model_file_path(places["spec"])
    read = int(re.search(r"\(([\d,]+) bytes; expected 232,589 bytes", str(caught.value)).group(1).replace(",", ""))
    assert YUNET.size < read < 2 * YUNET.size  # reading stopped soon after the published size
    places["published"].unlink()
    with pytest.raises(UserError, match=f"{YUNET.name}: not in .* and the download from .* failed"):
        model_file_path(places["spec"])
    assert not places["cache"].exists() or list(places["cache"].iterdir()) == []


def test_a_wrong_file_in_a_searched_folder_names_it(places):
    places["weights"].mkdir()
    (places["weights"] / YUNET.name).write_bytes(b"truncated")
    with pytest.raises(UserError, match=re.escape(f"{places['weights'] / YUNET.name}: not the published {YUNET.name} "
                                                  "(9 bytes; expected 232,589 bytes")):
        model_file_path(places["spec"])


def test_downloads_can_be_turned_off(places, monkeypatch):
    monkeypatch.setenv("FERKERAS_NO_DOWNLOAD", "1")
    with pytest.raises(UserError, match=r"not in .* and downloads are off \(\$FERKERAS_NO_DOWNLOAD\); download "
                                        r"https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"):
        model_file_path(YUNET)


def test_predict_without_a_detector_model_anywhere_says_how_to_get_one(models, tmp_path):
    """The whole chain from the command line, offline, with empty folders: one line, exit 2, no output."""
    cv2.imwrite(str(tmp_path / "picture.png"), faint_noise(120, 160, seed=1))
    env = {key: value for key, value in os.environ.items() if key != "FERKERAS_WEIGHTS"}
    env.update(FERKERAS_CACHE=str(tmp_path / "cache"), FERKERAS_NO_DOWNLOAD="1")
    done = subprocess.run([sys.executable, str(REPO / "predict.py"), "--model", str(models["dynamic"]), "picture.png"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {YUNET.name}: not in {tmp_path / 'cache' / 'weights'}/ and downloads "
                                  "are off"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "--detector_model PATH" in done.stderr
    assert not (tmp_path / "predictions").exists()


def test_the_suite_cannot_reach_the_network():
    """conftest's `loopback_only`: a test that would call out fails offline and online alike."""
    import socket

    with socket.socket() as remote, pytest.raises(OSError, match="may not touch the network"):
        remote.connect(("192.0.2.1", 80))  # TEST-NET-1: refused before any packet leaves
