#!/opt/golden/bin/python
"""Peer of `tbert bench --data`: ONNX Runtime on the CPU running the model exported with torch.onnx
(last_hidden_state, dynamic batch and sequence axes), graph optimisations on (ORT_ENABLE_ALL) and, with
--fuse (default), onnxruntime.transformers' BERT fusions (fused attention, layernorm, GELU) as its docs
recommend for BERT inference. Same thread count (intra-op threads), texts, ids, batches and pooling as tbert.
Prints one JSON line."""
import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import torch
import transformers

import encoder_common as ec


class Wrapped(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def export(model_dir, path):
    model = transformers.BertModel.from_pretrained(model_dir, add_pooling_layer=False,
                                                   attn_implementation="eager").float().eval()
    ids = torch.ones((2, 16), dtype=torch.long)
    axes = {0: "batch", 1: "seq"}
    kw = dict(input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last_hidden_state"],
              dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                            "last_hidden_state": axes}, opset_version=17)
    with torch.no_grad():
        try:
            torch.onnx.export(Wrapped(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), path, dynamo=False, **kw)
        except TypeError:  # older torch without the dynamo switch
            torch.onnx.export(Wrapped(model), (ids, torch.ones_like(ids), torch.zeros_like(ids)), path, **kw)


def fuse(path, out, cfg):
    from onnxruntime.transformers import optimizer
    m = optimizer.optimize_model(path, model_type="bert", num_heads=cfg["num_attention_heads"],
                                 hidden_size=cfg["hidden_size"], opt_level=1)
    m.save_model_to_file(out)
    return m.get_fused_operator_statistics()


def main():
    ap = argparse.ArgumentParser()
    ec.add_args(ap)
    ap.add_argument("--onnx", default="/tmp/tbert_peer_encoder.onnx", help="export path (reused when present)")
    ap.add_argument("--no-fuse", action="store_true", help="plain ORT graph optimisations only")
    args = ap.parse_args()
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    if not os.path.exists(args.onnx):
        export(args.model, args.onnx)
    path, fused = args.onnx, None
    if not args.no_fuse:
        path = args.onnx.replace(".onnx", "_fused.onnx")
        if not os.path.exists(path):
            stats = fuse(args.onnx, path, cfg)
            print(f"onnx peer: fusions {stats}", file=sys.stderr)
        fused = "onnxruntime.transformers bert fusions"
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]

    def forward(inp, mask):
        feeds = {"input_ids": inp, "attention_mask": mask, "token_type_ids": np.zeros_like(inp)}
        h = sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]
        return ec.pool_np(h, mask, args.pool)

    ec.run("onnxruntime", args, cfg, forward,
           {"versions": f"onnxruntime {ort.__version__}, torch {torch.__version__}",
            "graph": fused or "ORT_ENABLE_ALL only"})


if __name__ == "__main__":
    main()
