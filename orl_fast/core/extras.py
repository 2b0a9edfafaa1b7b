"""Optional dependencies, imported through the extra that installs them.

``pip install orl-fast`` brings what every stage shares; the heavy or hardware-specific parts are
extras (``pyproject.toml``): ``ray`` (Stage 2 on Ray, Ray jobs, Ray Train), ``mining`` (OpenCV
contrib for selective search, faiss), ``dali`` (the GPU loader), ``eval`` (scikit-learn,
pycocotools, timm), ``s3``. A step that needs one of them says which extra to install, once, at
start-up, instead of a traceback from deep inside a long run (the CLI prints the message alone).
A dependency that no extra can install (detectron2, which is built from source) is required the
same way, the message saying how to install it instead.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from orl_fast.core.errors import UserError


class MissingExtra(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def require(module: str, extra: str, purpose: str, hint: str = "",
            install: str = "") -> ModuleType:
    """``import module``, or :class:`MissingExtra` saying that ``purpose`` needs ``extra``
    (``hint``: what else would do, appended; ``install``: how to install ``extra`` when it is
    not an extra of orl-fast, said instead of the pip command)."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        what = f"`{extra}`" if install else f"the `{extra}` extra"
        how = install or f"pip install 'orl-fast[{extra}]'"
        raise MissingExtra(f"{purpose} needs {what} ({e}): {how}"
                           f"{' ' + hint if hint else ''}") from e


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
