"""Write a llama-architecture GGUF with random Q8_0 weights of about a chosen size.

Decode speed depends on the bytes the weights take, not on their values, so random weights
measure the same memory traffic as a real model of that size and quantisation.

    python3 bench/synth_gguf.py OUT.gguf --size-mb 800

The vocabulary is a tiny SentencePiece ("llama") one: <unk> <s> </s>, the 256 byte-fallback
tokens <0x00>..<0xFF> and a few words, which is all llama.cpp's SPM tokenizer needs to
tokenize any text (unknown characters fall back to bytes).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

QK8_0 = 32  # values per Q8_0 block: one f16 scale + 32 int8 = 34 bytes (ggml-common.h)


def _q8_0(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Random Q8_0 blocks laid out the way ggml stores them (row-major, 34 bytes a block)."""
    nblk = cols // QK8_0
    blocks = np.empty((rows, nblk, 34), dtype=np.uint8)
    # scale 1/256 keeps activations finite through many layers of random weights
    blocks[:, :, 0:2] = np.frombuffer(np.float16(1 / 256).tobytes(), dtype=np.uint8)
    blocks[:, :, 2:] = rng.integers(-127, 128, size=(rows, nblk, 32), dtype=np.int8).view(np.uint8)
    return blocks.reshape(rows, nblk * 34)


def vocab() -> tuple[list[bytes], list[float], list[int]]:
    import gguf

    tt = gguf.TokenType
    toks: list[bytes] = [b"<unk>", b"<s>", b"</s>"]
    types = [tt.UNKNOWN, tt.CONTROL, tt.CONTROL]
    toks += [f"<0x{i:02X}>".encode() for i in range(256)]
    types += [tt.BYTE] * 256
    words = ["\u2581", "\u2581the", "\u2581a", "\u2581of", "\u2581hello", "\u2581world", "e", "t"]
    toks += [w.encode() for w in words]
    types += [tt.NORMAL] * len(words)
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
    return toks, scores, [int(t) for t in types]


def layer_bytes(n_embd: int, n_ff: int) -> int:
    q8 = (4 * n_embd * n_embd + 3 * n_embd * n_ff) // QK8_0 * 34  # 34 bytes per block
    return q8 + 2 * n_embd * 4


def write(path: str, *, size_mb: float, n_embd: int = 2048, n_ff: int = 5632,
          n_head: int = 16, seed: int = 0) -> dict[str, int]:
    import gguf

    n_layer = max(1, round(size_mb * 1e6 / layer_bytes(n_embd, n_ff)))
    toks, scores, types = vocab()
    n_vocab = len(toks)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(f"hosttune-synthetic-{n_layer}L-{n_embd}")
    w.add_context_length(4096)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    q8 = gguf.GGMLQuantizationType.Q8_0
    ones = np.ones(n_embd, dtype=np.float32)
    # numpy shapes are ggml's ne reversed: attn_q ne=[n_embd, n_embd], ffn_up ne=[n_embd, n_ff]
    w.add_tensor("token_embd.weight", _q8_0(rng, n_vocab, n_embd), raw_dtype=q8)
    for i in range(n_layer):
        b = f"blk.{i}."
        w.add_tensor(b + "attn_norm.weight", ones)
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(b + t + ".weight", _q8_0(rng, n_embd, n_embd), raw_dtype=q8)
        w.add_tensor(b + "ffn_norm.weight", ones)
        w.add_tensor(b + "ffn_gate.weight", _q8_0(rng, n_ff, n_embd), raw_dtype=q8)
        w.add_tensor(b + "ffn_up.weight", _q8_0(rng, n_ff, n_embd), raw_dtype=q8)
        w.add_tensor(b + "ffn_down.weight", _q8_0(rng, n_embd, n_ff), raw_dtype=q8)
    w.add_tensor("output_norm.weight", ones)
    w.add_tensor("output.weight", _q8_0(rng, n_vocab, n_embd), raw_dtype=q8)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"n_layer": n_layer, "n_embd": n_embd, "n_ff": n_ff, "n_vocab": n_vocab}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--size-mb", type=float, default=800)
    ap.add_argument("--n-embd", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    info = write(a.out, size_mb=a.size_mb, n_embd=a.n_embd, seed=a.seed)
    print(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
