"""The device side without torch: exported ONNX heads run by onnxruntime (``pip install 'dyno[device]'``).

    heads = OrtHeads("heads/", plan)                 # `dyno export --plan plan.json --out heads/`
    with OrtClient(plan, heads, server="cloud:50051") as client:
        client.infer(x)                              # numpy in, Result out
    profile = measure_device("heads/", inputs)       # a device profile for `dyno analyze --device-profile`

Nothing here imports torch (a test runs it with ``sys.modules["torch"] = None``): numpy, onnxruntime,
the codec, the policy, the plan and the runtime's torch-free connection are all it needs.
"""

from dyno.device._client import OrtClient
from dyno.device._data import load_inputs
from dyno.device._heads import OrtHeads
from dyno.device._profile import measure_device, save_profile
from dyno.device._run import run_labelled

__all__ = ["OrtClient", "OrtHeads", "load_inputs", "measure_device", "run_labelled", "save_profile"]
