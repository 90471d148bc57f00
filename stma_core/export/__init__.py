"""`stma export`: stateless frame / value / step graphs (ONNX or TorchScript) plus a manifest.

Memory management stays in host code (VideoSession with stma_core.inference.onnx_session.ExportedEngine).
"""

from stma_core.export.exporter import export_model
from stma_core.export.manifest import Manifest, load_manifest

__all__ = ["Manifest", "export_model", "load_manifest"]
