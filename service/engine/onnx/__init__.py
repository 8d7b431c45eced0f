"""ONNX models in and out of gradserve's graphs (docs/onnx.md)."""
