"""SkipFailedCases (a bad case is skipped with its reason logged, the others go on) and file-state cache keys."""

from __future__ import annotations

import logging
import os

import nibabel as nib
import numpy as np
import pytest
from monai.data import Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from pipeline.data.reader import CTImageReader
from pipeline.training.datasets import SkipFailedCases, file_state_hashing, root_cause


def _cases(tmp_path, n: int = 4, truncated: int | None = 1):
    """n real NIfTI files; the one at index ``truncated`` has a valid header but lost half its voxels."""
    entries = []
    for i in range(n):
        path = tmp_path / f"case{i}.nii"
        nib.save(nib.Nifti1Image(np.full((6, 5, 4), float(i), np.float32), np.eye(4)), str(path))
        if i == truncated:
            data = path.read_bytes()
            path.write_bytes(data[: len(data) - 40])
        entries.append({"image": str(path), "label": i % 2, "case_id": f"case-{i}"})
    return entries


def _load_chain():
    return Compose([LoadImaged(keys="image", reader=CTImageReader(workers=1)), EnsureChannelFirstd(keys="image")])


def test_failing_case_is_replaced_by_the_next_and_logged_once(tmp_path, caplog):
    dataset = SkipFailedCases(Dataset(_cases(tmp_path), transform=_load_chain()))
    assert len(dataset) == 4
    with caplog.at_level(logging.WARNING, logger="pipeline.training.datasets"):
        values = [float(dataset[i]["image"].mean()) for i in range(4)] + [float(dataset[1]["image"].mean())]
    assert values == [0.0, 2.0, 2.0, 3.0, 2.0]  # case 1 stands in as case 2, every time
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipeline.training.datasets"]
    assert len(warnings) == 1 and "case-1" in warnings[0] and "failed to load" in warnings[0]
    assert "RuntimeError: applying transform" not in warnings[0]  # the root cause, not MONAI's wrapper
    assert set(dataset.failed) == {"case-1"}


def test_check_all_drops_failing_cases_up_front(tmp_path):
    cache = tmp_path / "cache"
    dataset = SkipFailedCases(
        PersistentDataset(_cases(tmp_path), transform=_load_chain(), cache_dir=cache), check_all=True
    )
    assert len(dataset) == 3
    assert [float(dataset[i]["image"].mean()) for i in range(3)] == [0.0, 2.0, 3.0]
    assert len(list(cache.iterdir())) == 3  # the check filled the cache for the readable cases


def test_no_loadable_case_is_an_error(tmp_path):
    entries = [{"image": str(tmp_path / "gone.nii.gz"), "label": 0, "case_id": "case-x"}]
    with pytest.raises(RuntimeError, match="none of the 1 cases"):
        SkipFailedCases(Dataset(entries, transform=_load_chain()), check_all=True)
    runtime = SkipFailedCases(Dataset(entries, transform=_load_chain()))
    with pytest.raises(RuntimeError, match="every one of the 1 cases failed"):
        runtime[0]


def test_root_cause_names_the_innermost_error():
    try:
        try:
            raise FileNotFoundError("scan-0003/IM1.dcm: no such file\nsecond line")
        except FileNotFoundError as inner:
            raise RuntimeError("applying transform <LoadImaged>") from inner
    except RuntimeError as outer:
        assert root_cause(outer) == "FileNotFoundError: scan-0003/IM1.dcm: no such file"


@pytest.mark.parametrize("hash_func", [pickle_hashing, file_state_hashing])
def test_a_rewritten_scan_is_not_served_from_a_stale_cache_with_the_file_state_hash(tmp_path, hash_func):
    path = tmp_path / "scan.nii"
    entry = {"image": str(path), "label": 1, "case_id": "case-0"}
    nib.save(nib.Nifti1Image(np.full((6, 5, 4), 1.0, np.float32), np.eye(4)), str(path))

    def first_voxel() -> float:
        dataset = PersistentDataset([entry], _load_chain(), cache_dir=tmp_path / "cache", hash_func=hash_func)
        return float(dataset[0]["image"].flatten()[0])

    assert first_voxel() == 1.0
    nib.save(nib.Nifti1Image(np.full((6, 5, 4), 7.0, np.float32), np.eye(4)), str(path))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))  # coarse-clock filesystems
    # MONAI's entry-only key serves the old scan; the file-state key loads the new one
    assert first_voxel() == (7.0 if hash_func is file_state_hashing else 1.0)


def test_file_state_hash_follows_the_files_of_a_series_folder(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"a" * 10)
    entry = {"image": str(series), "label": 0, "case_id": "c", "missing": str(tmp_path / "nope")}
    key = file_state_hashing(entry)
    assert file_state_hashing(dict(entry)) == key  # deterministic
    (series / "2.dcm").write_bytes(b"b" * 10)
    added = file_state_hashing(entry)
    (series / "1.dcm").write_bytes(b"c" * 11)  # rewritten in place with another size
    assert len({key, added, file_state_hashing(entry)}) == 3
    assert file_state_hashing({**entry, "label": 1}) != file_state_hashing(entry)
