"""aamct: a MONAI-centric pipeline for 3D CT classification.

Stages (one sub-package each): ``data`` (ingestion, manifests, splits, demo cohort), ``transforms``,
``networks`` (AAM-ResNet-3D and baselines), ``training``, ``inference``, ``evaluation``, ``sharing``.
"""

import logging as _logging
import warnings as _warnings

__version__ = "0.1.0"

__all__ = ["__version__"]

# MONAI >= 1.5 announces on every import that NVIDIA's optional nvImageCodec decoder is absent (a warning log line
# plus a UserWarning). pydicom's own decoders (pylibjpeg-openjpeg for JPEG 2000) are what this project uses, so the
# notice is noise in every command's output.
_logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(_logging.ERROR)
# highdicom logs every copied module at INFO (about 20 lines per DICOM output); `aamct -v` brings them back
_logging.getLogger("highdicom").setLevel(_logging.WARNING)
_warnings.filterwarnings("ignore", message=r"NvImgCodecPydicomReader", category=UserWarning)
