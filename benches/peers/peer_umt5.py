"""Time one transformers UMT5EncoderModel forward on the CPU (the peer for baton's umT5 encode).
umT5-XXL widths (d_model 4096, d_ff 10240, 64 heads x 64) with fewer layers and a smaller
vocabulary (the embedding lookup is not the cost), seeded random weights, every token real.
Prints one line ending in `median <ms> ms (...)`.
Usage: python peer_umt5.py --layers 2 --tokens 512 --threads 2 --dtype float32 --reps 3"""
import argparse, time, statistics, torch
from transformers import UMT5Config, UMT5EncoderModel

p = argparse.ArgumentParser()
p.add_argument("--layers", type=int, default=2); p.add_argument("--tokens", type=int, default=512)
p.add_argument("--vocab", type=int, default=4096); p.add_argument("--threads", type=int, default=2)
p.add_argument("--reps", type=int, default=3); p.add_argument("--dtype", default="float32")
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
dt = getattr(torch, a.dtype)
cfg = UMT5Config(vocab_size=a.vocab, d_model=4096, d_kv=64, d_ff=10240, num_layers=a.layers,
                 num_heads=64, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
m = UMT5EncoderModel(cfg).to(dt).eval()
ids = torch.randint(0, a.vocab, (1, a.tokens))
mask = torch.ones(1, a.tokens, dtype=torch.long)
times = []
with torch.inference_mode():
    m(input_ids=ids, attention_mask=mask)  # warm-up
    for _ in range(a.reps):
        s = time.perf_counter(); m(input_ids=ids, attention_mask=mask); times.append(time.perf_counter() - s)
print(f"torch {torch.__version__} {a.dtype} threads={a.threads} umt5 layers={a.layers} tokens={a.tokens}: "
      f"median {statistics.median(times)*1000:.1f} ms (min {min(times)*1000:.1f}, max {max(times)*1000:.1f})")
