"""Reading videos: decoding, frame sampling and optical-flow images (OpenCV)."""
