"""Optical flow between consecutive frames, and flow images for a CNN.

Flow images follow the LRCN / S2VT recipe: channel 0 = x-flow*16 + 128 and channel 1 =
y-flow*16 + 128, each clipped to [0, 255]; channel 2 = flow magnitude*16 + 128, capped at
255. A shape moving right gives channel 0 above 128, moving down gives channel 1 above
128 (image y grows downwards). The paper used Brox flow; here OpenCV's DIS (default) or
Farneback.
"""
from __future__ import annotations

import cv2
import numpy as np

from s2vt.runtime.errors import S2VTError

METHODS = ("dis", "farneback")
# flow image = flow * SCALE + OFFSET (the LRCN recipe); the store signature records both
SCALE, OFFSET = 16, 128


class FlowComputer:
    """Dense flow ``prev -> next`` (BGR uint8 frames) in pixels, (H, W, 2) float32."""

    def __init__(self, method: str = "dis"):
        if method not in METHODS:
            raise S2VTError(f"--flow-method {method!r} is unknown; choose one of {', '.join(METHODS)}")
        self.method = method
        self._dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if method == "dis" else None

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        a = cv2.cvtColor(prev, cv2.COLOR_BGR2GRAY) if prev.ndim == 3 else prev
        b = cv2.cvtColor(nxt, cv2.COLOR_BGR2GRAY) if nxt.ndim == 3 else nxt
        if self._dis is not None:
            return self._dis.calc(a, b, None)
        return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)


def flow_to_image(flow: np.ndarray) -> np.ndarray:
    """(H, W, 2) flow in pixels -> (H, W, 3) uint8 flow image (x, y, magnitude).

    One OpenCV pass: ``addWeighted`` scales, offsets, rounds and saturates to [0, 255] as
    ``clip(round(v * SCALE + OFFSET), 0, 255)`` would, without float64 temporaries."""
    flow = np.ascontiguousarray(flow, dtype=np.float32)
    x, y = flow[..., 0], flow[..., 1]
    planes = cv2.merge([x, y, cv2.magnitude(x, y)])
    return cv2.addWeighted(planes, SCALE, planes, 0, OFFSET, dtype=cv2.CV_8U)
