"""Optional dependencies, imported through the extra that installs them.

``pip install orl-fast`` brings what every stage shares; the heavy or hardware-specific parts are
extras (``pyproject.toml``): ``ray`` (Stage 2 on Ray, Ray jobs, Ray Train), ``mining`` (OpenCV
contrib for selective search, faiss), ``dali`` (the GPU loader), ``eval`` (scikit-learn,
pycocotools, timm), ``s3``. A step that needs one of them says which extra to install, once, at
start-up, instead of a traceback from deep inside a long run (the CLI prints the message alone).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from orl_fast.core.errors import UserError


class MissingExtra(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def require(module: str, extra: str, purpose: str, hint: str = "") -> ModuleType:
    """``import module``, or :class:`MissingExtra` saying that ``purpose`` needs ``extra``
    (``hint``: what else would do, appended)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"{purpose} needs the `{extra}` extra ({e}): "
                           f"pip install 'orl-fast[{extra}]'{' ' + hint if hint else ''}") from e


def require_opencv_contrib(purpose: str = "selective search") -> ModuleType:
    """``cv2`` with the contrib modules (``cv2.ximgproc``), which plain OpenCV lacks."""
    cv2 = require("cv2", "mining", purpose)
    if not hasattr(cv2, "ximgproc"):
        raise MissingExtra(
            f"{purpose} needs OpenCV's contrib modules (cv2.ximgproc), which the installed cv2 "
            f"{getattr(cv2, '__version__', '')} at {getattr(cv2, '__file__', '?')} lacks: "
            "pip install 'orl-fast[mining]' (opencv-contrib-python-headless) and uninstall "
            "opencv-python / opencv-python-headless, which provide the same cv2 without them")
    return cv2
