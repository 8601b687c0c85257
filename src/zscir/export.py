"""`zscir export isa --format onnx`: write ISA's query side (light encoder + token learner) for edge devices.

The ONNX graph maps pixels (B, 3, H, W), preprocessed as the backbone does, to pseudo tokens (B, M, W);
the app then joins them with the modification text in its text tower (or sends them to a server that does).
`OnnxQueryEncoder` runs an exported file with onnxruntime and refuses input of the wrong shape with a message
that gives the expected one."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from zscir.errors import InputError
from zscir.methods.isa import ISAQueryEncoder, load_isa_modules

FORMATS = ("onnx",)
#: methods whose query side runs without the backbone's image tower (so it can ship to a device alone)
EXPORTABLE = ("isa",)
INPUT_NAME = "pixels"
OUTPUT_NAME = "pseudo_tokens"


def export_isa_onnx(checkpoint: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Export an asymmetric ISA checkpoint's query side to an ONNX file (dynamic batch size)."""
    _require("onnx")
    cfg, light, learner, _meta = load_isa_modules(checkpoint)
    if light is None:
        raise InputError(f"{checkpoint}: a symmetric ISA checkpoint runs the large image tower on the query side; "
                         "only the asymmetric query side (light encoder + token learner) is exported")
    model = ISAQueryEncoder(light, learner, cfg.image_size, cfg.in_channels).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, cfg.in_channels, cfg.image_size, cfg.image_size)
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter is the one that needs no onnxscript; its deprecation notice is noise here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (dummy,), str(out), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                          dynamo=False)
    import onnx

    proto = onnx.load(str(out))
    expected = [cfg.in_channels, cfg.image_size, cfg.image_size]
    for key, value in {"zscir.kind": "isa-query-side", "zscir.input_shape": json.dumps(["B", *expected]),
                       "zscir.n_tokens": str(cfg.n_tokens), "zscir.word_dim": str(cfg.word_dim),
                       "zscir.template": cfg.template}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (f"zscir ISA query side: pixels (B, {', '.join(map(str, expected))}) -> pseudo tokens "
                        f"(B, {cfg.n_tokens}, {cfg.word_dim})")
    onnx.save(proto, str(out))
    return out


def _require(module: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(f"{module} is not installed: pip install 'zscir[onnx]' (pinned onnx and onnxruntime)")


class OnnxQueryEncoder:
    """Runs an exported ISA query side with onnxruntime: pixels (B, C, H, W) float32 -> tokens (B, M, W)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        _require("onnxruntime")
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=providers or ["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.expected = tuple(int(d) for d in inp.shape[1:])

    def __call__(self, pixels: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(pixels, torch.Tensor):
            pixels = pixels.detach().cpu().numpy()
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != self.expected:
            raise InputError(
                f"expected pixels of shape (B, {', '.join(map(str, self.expected))}), got {tuple(pixels.shape)}"
            )
        return self.session.run(None, {self.input_name: pixels})[0]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a method's query side for edge devices (ISA -> ONNX)",
                       description="Export the query side of a trained method. `zscir export isa --checkpoint DIR "
                       "--format onnx --out FILE` writes the asymmetric ISA light encoder + token learner.")
    p.add_argument("method", nargs="?", default=None,
                   help="the method whose query side to export (isa; default: the checkpoint's method)")
    p.add_argument("--checkpoint", required=True, help="ISA checkpoint folder (from `zscir train isa`)")
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--out", required=True, help="output file (e.g. isa_query.onnx)")
    p.add_argument("--opset", type=int, default=17)

    def run(args: argparse.Namespace) -> int:
        from zscir.utils.io import check_output_file

        check_output_file(args.out)  # before the export, not after it
        from zscir.methods.build import precheck

        name = precheck(args.method, [args.checkpoint])  # the same refusals as every other command
        if name not in EXPORTABLE:
            raise InputError(f"method {name!r} has no query side to export on its own (exportable: "
                             f"{', '.join(EXPORTABLE)}; isa/symmetric runs the large image tower on the query side)")
        path = export_isa_onnx(args.checkpoint, args.out, args.opset)
        print(f"wrote {path} (input '{INPUT_NAME}', output '{OUTPUT_NAME}')")
        return 0

    p.set_defaults(func=run)
