"""Reading caloforge's files from the PyTorch reference scripts (no safetensors package needed)."""
import json
import struct

import numpy as np


def read_safetensors(path, dtype=np.float32):
    """A caloforge weights file (all tensors F32): {name: array of `dtype`} and the metadata."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, h in header.items():
        if h["dtype"] != "F32":
            raise SystemExit(f"{path}: {name} is {h['dtype']}, expected F32")
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(h["shape"]).astype(dtype)
    return out, meta
