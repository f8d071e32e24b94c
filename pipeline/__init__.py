"""aamct: a MONAI-centric pipeline for 3D CT classification.

Stages (one sub-package each): ``data`` (ingestion, manifests, splits, demo cohort), ``transforms``,
``networks`` (AAM-ResNet-3D and baselines), ``training``, ``inference``, ``evaluation``, ``sharing``.

``__version__`` is the one version of the project: the distribution's (pyproject.toml reads this assignment
statically, ``[tool.setuptools.dynamic]``), so ``importlib.metadata.version("aamct")`` and ``aamct --version`` say
it, and the bundle's (``bundle/configs/metadata.json`` "version" and its ``required_packages_version["aamct"]``
hold the same string, which ``tests/test_version.py`` asserts). Why the literal lives here and the bundle copies it,
not the other way round: ``bundle/`` is not part of the installed package, so a non-editable install could not read
metadata.json at import time, and setuptools reads a literal assignment without importing anything. Release: change
this line, the two fields of metadata.json (plus a changelog entry), and reinstall (``pip install --no-deps -e .``)
so the installed distribution's metadata follows. An exported bundle's own version is a release of trained weights
(:func:`pipeline.sharing.export_bundle` bumps it from the source bundle's) and records this package version under
``required_packages_version["aamct"]``.
"""

import logging as _logging
import warnings as _warnings

__version__ = "0.3.0"

__all__ = ["__version__"]

# MONAI >= 1.5 announces on every import that NVIDIA's optional nvImageCodec decoder is absent (a warning log line
# plus a UserWarning). pydicom's own decoders (pylibjpeg-openjpeg for JPEG 2000) are what this project uses, so the
# notice is noise in every command's output.
_logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(_logging.ERROR)
# highdicom logs every copied module at INFO (about 20 lines per DICOM output); `aamct -v` brings them back
_logging.getLogger("highdicom").setLevel(_logging.WARNING)
_warnings.filterwarnings("ignore", message=r"NvImgCodecPydicomReader", category=UserWarning)
