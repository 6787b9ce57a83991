#!/opt/golden/bin/python
"""Peer of `tbert bench --data`: transformers BertModel (float32, eager PyTorch on the CPU, torch's default
attention implementation), same thread count, same texts, ids, batches and pooling. Prints one JSON line."""
import argparse
import json
import os

import torch
import transformers

import encoder_common as ec


def main():
    ap = argparse.ArgumentParser()
    ec.add_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    model = transformers.BertModel.from_pretrained(args.model, add_pooling_layer=False).float().eval()

    def forward(inp, mask):
        with torch.inference_mode():
            h = model(input_ids=torch.from_numpy(inp), attention_mask=torch.from_numpy(mask),
                      token_type_ids=torch.zeros_like(torch.from_numpy(inp))).last_hidden_state
            m = torch.from_numpy(mask).unsqueeze(-1).to(h.dtype)
            if args.pool == "mean":
                return ((h * m).sum(1) / m.sum(1)).numpy()
            return (h * m).reshape(h.shape[0], -1).numpy()

    ec.run("pytorch", args, cfg, forward,
           {"versions": f"torch {torch.__version__}, transformers {transformers.__version__}",
            "attention": model.config._attn_implementation})


if __name__ == "__main__":
    main()
