"""Export the heads of a model's cuts for devices that run them without torch (ONNX, onnxruntime).

    manifest = dyno.export.export_plan(plan, model, "heads/")       # one .onnx per usable cut
    manifest = dyno.export.export_heads(model, cuts, "heads/", model_name="fmnist-resnet")
    rows = dyno.export.compare(manifest, "heads/", model, inputs)   # |ORT - torch| and latency per cut

Side values follow the partitioner's rule: batch-size and shape values are recomputed by the tail and
constants folded into it, so the head returns only the activation; a cut whose side value must travel
with the activation (``Cut.batchable`` False) is refused, with the reason, in the manifest.
"""

from dyno.export._compare import CompareRow, compare
from dyno.export._onnx import EXPORTER, OPSET, device_notes, export_heads, export_plan, plan_cuts

__all__ = ["CompareRow", "EXPORTER", "OPSET", "compare", "device_notes", "export_heads", "export_plan", "plan_cuts"]
