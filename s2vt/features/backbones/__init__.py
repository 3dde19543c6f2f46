"""Image networks that turn frames into feature vectors: torchvision, timm and EfficientNet-Lite0."""
