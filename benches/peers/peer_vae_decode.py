"""Time one diffusers AutoencoderKLWan decode on the CPU (the peer for baton's VAE decode speed).

Usage: python peer_vae_decode.py [--weights W.safetensors] [--latent L.safetensors] [--out V.safetensors]
                                 [--frames 3] [--hw 32] [--threads 2] [--reps 3]

The model has the real Wan 2.1 widths (base 96, dim_mult 1,2,4,4, 2 residual blocks). With
--weights (a Wan 2.1 VAE in the original `WanVAE_` key names, as `baton bench speed` writes it)
the names are mapped to diffusers' and every parameter must be present; without it the weights
are torch's default init after torch.manual_seed(0). --latent reads the key `latent`
[1,16,T,h,w]; else a seeded normal latent. --out writes the decoded video (key `video`).
Prints `median <ms> ms`."""
import argparse, re, statistics, time
import torch
from diffusers import AutoencoderKLWan

p = argparse.ArgumentParser()
p.add_argument("--weights"); p.add_argument("--latent"); p.add_argument("--out")
p.add_argument("--frames", type=int, default=3); p.add_argument("--hw", type=int, default=32)
p.add_argument("--threads", type=int, default=2); p.add_argument("--reps", type=int, default=3)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
NRB = 2  # num_res_blocks of Wan 2.1


def original_name(k):
    """diffusers AutoencoderKLWan key -> the original WanVAE_ key (Wan 2.1 structure)."""
    top = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2.",
           "encoder.conv_in.": "encoder.conv1.", "decoder.conv_in.": "decoder.conv1.",
           "encoder.norm_out.": "encoder.head.0.", "decoder.norm_out.": "decoder.head.0.",
           "encoder.conv_out.": "encoder.head.2.", "decoder.conv_out.": "decoder.head.2."}
    for f, t in top.items():
        if k.startswith(f):
            return t + k[len(f):]
    res = {"norm1.": "residual.0.", "conv1.": "residual.2.", "norm2.": "residual.3.",
           "conv2.": "residual.6.", "conv_shortcut.": "shortcut."}

    def inner(r):
        for f, t in res.items():
            if r.startswith(f):
                return t + r[len(f):]
        return r  # attention (norm, to_qkv, proj) and resample (resample.1, time_conv) keep theirs

    side, rest = k.split(".", 1)
    m = re.match(r"mid_block\.attentions\.0\.(.*)", rest)
    if m:
        return f"{side}.middle.1.{m.group(1)}"
    m = re.match(r"mid_block\.resnets\.(\d+)\.(.*)", rest)
    if m:
        return f"{side}.middle.{2 * int(m.group(1))}.{inner(m.group(2))}"
    m = re.match(r"down_blocks\.(\d+)\.(.*)", rest)
    if m:
        return f"encoder.downsamples.{m.group(1)}.{inner(m.group(2))}"
    m = re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", rest)
    if m:
        return f"decoder.upsamples.{int(m.group(1)) * (NRB + 2) + int(m.group(2))}.{inner(m.group(3))}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", rest)
    if m:
        return f"decoder.upsamples.{int(m.group(1)) * (NRB + 2) + NRB + 1}.{m.group(2)}"
    raise KeyError(f"no original name for diffusers key {k}")


m = AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=NRB,
                     attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0).eval()
if a.weights:
    from safetensors.torch import load_file
    src = load_file(a.weights)
    sd = m.state_dict()
    new = {}
    for k, v in sd.items():
        o = original_name(k)
        if o not in src:
            raise SystemExit(f"{a.weights}: no tensor `{o}` (for diffusers `{k}`)")
        if tuple(src[o].shape) != tuple(v.shape):
            raise SystemExit(f"{a.weights}: `{o}` has shape {list(src[o].shape)}, diffusers `{k}` wants {list(v.shape)}")
        new[k] = src[o].float()
    m.load_state_dict(new, strict=True)
if a.latent:
    from safetensors.torch import load_file
    z = load_file(a.latent)["latent"].float()
else:
    z = torch.randn(1, 16, a.frames, a.hw, a.hw)
times = []
with torch.inference_mode():
    out = m.decode(z).sample  # warm-up
    for _ in range(a.reps):
        s = time.perf_counter(); out = m.decode(z).sample; times.append(time.perf_counter() - s)
if a.out:
    from safetensors.torch import save_file
    save_file({"video": out.contiguous()}, a.out)
print(f"torch {torch.__version__} AutoencoderKLWan decode threads={a.threads} latent={list(z.shape)} -> {list(out.shape)}: "
      f"median {statistics.median(times)*1000:.1f} ms (min {min(times)*1000:.1f}, max {max(times)*1000:.1f})")
