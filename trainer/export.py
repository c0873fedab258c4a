"""ONNX export in milliseconds: trace the graph once, then per version swap initializers.

``torch.onnx.export`` costs ~0.35 s (TorchScript) to ~6 s (dynamo) per call; the graph never
changes between versions, only the weights do. So :class:`OnnxExporter` exports once with
constant folding off (every parameter stays an initializer under its state_dict name) and
each :meth:`export` writes the new float32 bytes into those initializers and serialises.
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import onnx
import torch
from torch import nn

from schemas.errors import ExportError
from schemas.model_spec import INPUT_NAME, OUTPUT_NAME, InputSpec

OPSET = 17


def _distinct(model: nn.Module) -> nn.Module:
    """A copy whose parameters all differ: the exporter merges equal initializers (e.g. two
    zero-initialised heads of one shape) and the template needs one per parameter."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for i, p in enumerate(out.parameters()):
            p.copy_(torch.linspace(-1.0, 1.0, p.numel()).reshape(p.shape) * (1.0 + 0.01 * i))
    return out


class OnnxExporter:
    """Holds a template ModelProto for one architecture; cheap per-version export."""

    def __init__(self, model: nn.Module, spec: InputSpec) -> None:
        self.spec = spec
        dummy = torch.zeros(2, spec.history, len(spec.features))
        buf = io.BytesIO()
        model = _distinct(model.cpu().eval())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                buf,  # type: ignore[arg-type]  # file-like objects are accepted
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=False,
                dynamo=False,
            )
        self.proto = onnx.load_from_string(buf.getvalue())
        index = {init.name: i for i, init in enumerate(self.proto.graph.initializer)}
        names = [k for k, _ in model.named_parameters()]
        missing = [k for k in names if k not in index]
        if missing:
            raise ExportError(f"parameters not found as ONNX initializers: {missing}")
        self._index = {k: index[k] for k in names}
        self._shapes = {k: tuple(p.shape) for k, p in model.named_parameters()}

    def export(self, weights: dict[str, np.ndarray]) -> bytes:
        """Serialised ONNX model with ``weights`` (parameter name -> array) as initializers."""
        if set(weights) != set(self._index):
            raise ExportError(
                f"weights do not match the template: {sorted(set(weights) ^ set(self._index))}"
            )
        inits = self.proto.graph.initializer
        for k, arr in weights.items():
            if tuple(arr.shape) != self._shapes[k]:
                raise ExportError(f"{k}: shape {arr.shape} != template {self._shapes[k]}")
            init = inits[self._index[k]]
            del init.float_data[:]
            init.raw_data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        return self.proto.SerializeToString()
