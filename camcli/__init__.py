"""camcli: batch Grad-CAM and guided-backprop explanations for image classifiers."""

__version__ = "0.1.0"
