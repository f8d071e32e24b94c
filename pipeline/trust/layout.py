"""What ``aamct bundle export`` writes, as the received-bundle gate checks it: member names and the portable paths.

These are the exporter's contract with every reader of a received bundle; they live here, below the stages that
read bundles (inference, evaluation) and the one that writes them (sharing), so that writer and readers agree.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CHECKSUM_FILENAME",
    "DENSE_MODEL_FILE",
    "EAGER_CONFIG_CANDIDATES",
    "LARGE_FILES",
    "MODEL_FILES",
    "PORTABLE_PATHS",
    "PROJECT_BUNDLE",
    "REQUIRED_MEMBERS",
    "SIGNATURE_FILENAME",
    "TORCHSCRIPT_CONFIG",
]

#: sha256sum-format digests of every member except itself and the signature (its own digest is in the zip comment)
CHECKSUM_FILENAME = "checksums.sha256"
#: Ed25519 signature of the checksum file (``aamct bundle export --sign KEY``); optional, not listed in the checksums
SIGNATURE_FILENAME = "checksums.sha256.sig"
#: the TorchScript dense class-logit map (``DenseClassifier(network)``)
DENSE_MODEL_FILE = "model_dense.ts"
#: the recipient's stock-MONAI config, built on models/model_dense.ts
TORCHSCRIPT_CONFIG = "inference_torchscript.json"
#: configs searched (in order) for the eager ``network_def``
EAGER_CONFIG_CANDIDATES = ("inference.json", "train.json")
#: the model-zoo file listing the large files (weights) with their digests
LARGE_FILES = "large_files.yml"
#: the model files of an export, relative to ``NAME/``
MODEL_FILES = ("models/model.pt", "models/model.ts", f"models/{DENSE_MODEL_FILE}")
#: members every shared bundle must contain (relative to ``NAME/``)
REQUIRED_MEMBERS = (
    "configs/metadata.json",
    f"configs/{TORCHSCRIPT_CONFIG}",
    *MODEL_FILES,
    LARGE_FILES,
    "docs/README.md",
    "LICENSE",
    CHECKSUM_FILENAME,
)
#: the repository's own bundle: the configs an export is made from, the reference a received config is compared with
PROJECT_BUNDLE = Path(__file__).resolve().parents[2] / "bundle"
#: path-valued keys of the exported configs and the portable value each gets: the source bundle's values are this
#: repository's folders (``bundle``, ``runs/demo/...``), meaningless to a recipient, who passes their own
PORTABLE_PATHS: dict[str, str] = {
    "bundle_root": ".",
    "output_dir": "$os.path.join(@bundle_root, 'eval')",  # the model zoo's choice
    "teacher_ckpt": "$os.path.join(@bundle_root, 'models', 'model.pt')",  # distilling the shipped model further
    "datalist": "datalist.json",
    "manifest": "manifest.csv",
    "dataset_dir": "data",
}
