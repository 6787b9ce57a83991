#!/usr/bin/env python3
"""Make one model.safetensors (the file tbert reads) in a Hugging Face model folder.

usage: convert_to_safetensors.py FOLDER [--force]

Sources, first found wins: pytorch_model.bin; sharded pytorch_model.bin.index.json (+ shards); sharded
model.safetensors.index.json (+ shards). Needs torch and safetensors (a developer tool, never run in CI).
.bin files are loaded with weights_only=True (no pickled code runs). Every tensor is made contiguous and
un-shared, the result is written to a temp file, read back and compared tensor by tensor, then renamed
into place. Names are kept as they are (tbert accepts the `bert.` prefix and the old LayerNorm.gamma/beta).
"""
import argparse
import json
import os
import sys


def fail(msg: str) -> int:
    print(f"convert_to_safetensors: {msg}", file=sys.stderr)
    return 2


def shard_files(folder: str, index_name: str) -> list:
    with open(os.path.join(folder, index_name)) as f:
        weight_map = json.load(f)["weight_map"]
    return sorted(set(weight_map.values()))


def load_source(folder: str):
    import torch
    from safetensors.torch import load_file

    def load_bin(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        return state

    if os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
        return "pytorch_model.bin", load_bin(os.path.join(folder, "pytorch_model.bin"))
    for index, loader in (("pytorch_model.bin.index.json", load_bin), ("model.safetensors.index.json", load_file)):
        if os.path.isfile(os.path.join(folder, index)):
            state = {}
            for shard in shard_files(folder, index):
                part = loader(os.path.join(folder, shard))
                dup = set(part) & set(state)
                if dup:
                    raise RuntimeError(f"{shard}: tensor '{sorted(dup)[0]}' is also in another shard")
                state.update(part)
            return index, state
    raise FileNotFoundError("no pytorch_model.bin, pytorch_model.bin.index.json or model.safetensors.index.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", help="model folder")
    ap.add_argument("--force", action="store_true", help="overwrite an existing model.safetensors")
    args = ap.parse_args()
    dst = os.path.join(args.folder, "model.safetensors")
    if os.path.exists(dst) and not args.force:
        return fail(f"{dst} exists (use --force to overwrite)")
    try:
        import torch
        from safetensors.torch import load_file, save_file
    except ImportError as e:
        return fail(f"needs torch and safetensors ({e})")
    try:
        source, state = load_source(args.folder)
    except Exception as e:  # a corrupt file, a missing shard, not a state dict
        return fail(f"{args.folder}: cannot load the weights: {e}")
    tensors = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            return fail(f"{args.folder}/{source}: entry '{name}' is not a tensor")
        tensors[name] = t.detach().clone().contiguous()  # safetensors refuses shared storage
    tmp = dst + f".tmp.{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        back = load_file(tmp)
        for name, t in tensors.items():
            if name not in back or back[name].dtype != t.dtype or not torch.equal(back[name], t):
                raise RuntimeError(f"tensor '{name}' did not survive the round trip")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except Exception as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        return fail(f"{dst}: {e}")
    print(f"convert_to_safetensors: wrote {dst} from {source} ({len(tensors)} tensors)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
