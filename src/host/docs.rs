//! The one table that documents every script primitive.
//!
//! `.help name` in the REPL, `baton help name`, the README's reference
//! section (`baton help --markdown`), the REPL's completion and hints, and
//! the option keys each primitive accepts ([`crate::host::options::Opts::documented`])
//! all read this table, so the docs cannot drift from what the engine does.
//! `tests/docs.rs` checks that every function registered in the engine has an
//! entry and every entry names a registered function. The sampler table
//! lives beside it, in `sampler_docs.rs`.

pub use super::docs_render::{
    help_text, render_index, render_markdown, render_text, README_BEGIN, README_END,
};
pub use super::sampler_docs::{
    render_samplers, SamplerDoc, README_SAMPLERS_BEGIN, README_SAMPLERS_END, SAMPLERS,
};

/// One key of a primitive's options map.
pub struct OptDoc {
    pub key: &'static str,
    /// The default as a script would write it; "required" or "-" (none).
    pub default: &'static str,
    pub meaning: &'static str,
}

/// One primitive (or, for getters and operators, one script-visible name).
pub struct Doc {
    /// The name as a script calls it; getters are `Type.name`, operators `+`.
    pub name: &'static str,
    /// Every registered form, e.g. `load_model(path[, opts]) -> Model`.
    pub signature: &'static str,
    pub summary: &'static str,
    pub options: &'static [OptDoc],
    pub example: &'static str,
}

const fn o(key: &'static str, default: &'static str, meaning: &'static str) -> OptDoc {
    OptDoc {
        key,
        default,
        meaning,
    }
}

pub static DOCS: &[Doc] = &[
    // ---- models
    Doc {
        name: "load_model",
        signature: "load_model(path[, opts]) -> Model",
        summary: "Loads a Wan DiT, umT5 text encoder or Wan VAE; the architecture comes from the keys. \
                  `path` is searched under the model roots (and ComfyUI's model folders with --comfy); \
                  `builtin:wan-tiny-high`, `builtin:wan-tiny-low`, `builtin:umt5-tiny`, `builtin:wan-vae-tiny` (and for image to video `builtin:wan-tiny-i2v-high`, `builtin:wan-tiny-i2v-low`, `builtin:wan-tiny-ti2v`, `builtin:wan22-vae-tiny`, LoRAs `builtin:lora-tiny-i2v-high`, `builtin:lora-tiny-i2v-low`) need no files. \
                  A sharded set loads from its `*.safetensors.index.json` or its folder (diffusers `transformer/`).",
        options: &[
            o("name", "file stem", "the name vram() and errors show"),
            o("offload", "\"auto\"", "\"auto\" streams blocks that do not fit the budget; \"never\" fails naming what is loaded"),
            o("dtype", "the file's", "\"f32\", \"f16\" or \"bf16\" (fp8 files default to bf16); \"fp8\" keeps an fp8 / fp8_scaled DiT's weights at 1 byte and dequantises each layer at forward time"),
            o("heads", "inferred", "attention heads, when neither config.json nor metadata says"),
            o("tokenizer", "-", "a spiece.model for a text encoder that carries none"),
            o("check_weights", "false", "scan every weight for NaN/Inf (reads the whole file)"),
            o("prefetch", "true", "when blocks stream, read the next one on a helper thread while the current one computes (two block buffers instead of one)"),
        ],
        example: "let high = load_model(\"wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors\", #{ name: \"high\" });",
    },
    Doc {
        name: "prefetch_model",
        signature: "prefetch_model(path)",
        summary: "Starts reading a model file into the page cache in the background and returns at once, so a later `load_model` of it reads memory instead of disk. Holds no process memory; `wan::two_stage` prefetches the low expert while the high one samples.",
        options: &[],
        example: "prefetch_model(\"wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors\");",
    },
    Doc {
        name: "delete_model",
        signature: "delete_model(m)",
        summary: "Frees the model's device and host memory now; later use of `m` fails naming this line.",
        options: &[],
        example: "delete_model(high);",
    },
    Doc {
        name: "offload_model",
        signature: "offload_model(m)",
        summary: "ComfyUI's unload: device bytes freed, weights kept in host RAM; brought back on next use.",
        options: &[],
        example: "offload_model(high);",
    },
    Doc {
        name: "loaded_models",
        signature: "loaded_models() -> array of Model",
        summary: "The models currently loaded (deleted ones are gone).",
        options: &[],
        example: "for m in loaded_models() { print(m.name); }",
    },
    Doc {
        name: "models",
        signature: "models() -> array of maps",
        summary: "Model files available under the model roots and ComfyUI folders: `name`, `path`, `folder`, `bytes`, `arch` (from the header only; \"?\" when unrecognised). Prints as a table.",
        options: &[],
        example: "print(models());",
    },
    Doc {
        name: "predict",
        signature: "predict(m, x, timestep, context[, opts]) -> Tensor",
        summary: "One raw DiT forward; returns the velocity prediction. `timestep` is a number, a [B] tensor or per token [B, S] (TI2V). `x` is the model's full input, or with `image_cond` the latent alone. On a `model_from_fn` model it calls the function with `sigma = timestep / 1000`.",
        options: &[o("image_cond", "-", "an I2V expert's conditioning, concatenated after `x` (image_to_video `.image_cond`)")],
        example: "let v = predict(high, x, 999.0, pos);",
    },
    Doc {
        name: "model_from_fn",
        signature: "model_from_fn(f[, opts]) -> Model",
        summary: "A model whose prediction is the script function `f(x, sigma, context)`, which returns the flow velocity (a tensor shaped like `x`), as a Wan DiT does. `sample` (splits and `sampler_state` included) and `predict` take it like any model, with `context` the `positive` or `negative` tensor of the sample options: a toy field to try samplers, schedules and guidance on in milliseconds. It holds no weights (0 bytes in `vram()`); `baton plan` does not call the function. An error in `f` names its line, and the session goes on.",
        options: &[o("name", "\"fn<id>\"", "the name vram() and errors show")],
        example: "let toy = model_from_fn(|x, sigma, ctx| tanh(x * 0.5 + ctx * sigma), #{ name: \"toy\" });",
    },
    Doc {
        name: "Model.name",
        signature: "m.name -> string",
        summary: "The model's name (the `name` option or the file stem).",
        options: &[],
        example: "print(high.name);",
    },
    Doc {
        name: "Model.arch",
        signature: "m.arch -> string",
        summary: "Architecture and variant detected from the keys, e.g. \"wan-dit t2v\".",
        options: &[],
        example: "print(high.arch);",
    },
    Doc {
        name: "Model.dtype",
        signature: "m.dtype -> string",
        summary: "The resident dtype: \"f32\", \"f16\" or \"bf16\".",
        options: &[],
        example: "print(high.dtype);",
    },
    Doc {
        name: "Model.bytes",
        signature: "m.bytes -> int",
        summary: "Weight bytes at the resident dtype.",
        options: &[],
        example: "print(mib(high.bytes));",
    },
    Doc {
        name: "Model.resident_bytes",
        signature: "m.resident_bytes -> int",
        summary: "Bytes on the device now (the ledger's count).",
        options: &[],
        example: "print(mib(high.resident_bytes));",
    },
    Doc {
        name: "Model.offloaded_bytes",
        signature: "m.offloaded_bytes -> int",
        summary: "Bytes streamed from host memory at each forward.",
        options: &[],
        example: "print(mib(high.offloaded_bytes));",
    },
    Doc {
        name: "Model.deleted",
        signature: "m.deleted -> bool",
        summary: "True once delete_model(m) ran.",
        options: &[],
        example: "if !high.deleted { delete_model(high); }",
    },
    // ---- LoRA
    Doc {
        name: "apply_lora",
        signature: "apply_lora(m, path[, strength]) -> Model",
        summary: "Adds a LoRA (kohya/ComfyUI, PEFT, diffusers, musubi-tuner, .diff) on top of the model's others; strength 1.0 by default. Errors leave the model as it was.",
        options: &[],
        example: "apply_lora(high, \"lightx2v_high.safetensors\", 1.0);",
    },
    Doc {
        name: "remove_lora",
        signature: "remove_lora(m, path) -> Model",
        summary: "Removes one LoRA (by path or file name); touched layers are re-read from the checkpoint.",
        options: &[],
        example: "remove_lora(high, \"lightx2v_high.safetensors\");",
    },
    // ---- sampling
    Doc {
        name: "empty_latent",
        signature: "empty_latent(opts) -> Tensor",
        summary: "A zero latent [batch, channels, (frames-1)/4+1, height/8, width/8] (/16 for 48 channels).",
        options: &[
            o("width", "832", "pixels, a multiple of 16"),
            o("height", "480", "pixels, a multiple of 16"),
            o("frames", "81", "video frames, 4k+1"),
            o("batch", "1", "batch size"),
            o("channels", "16", "latent channels (16 for Wan 2.1/2.2 14B; 48 for TI2V-5B, whose latent is width/16 x height/16)"),
        ],
        example: "let x = empty_latent(#{ width: 832, height: 480, frames: 81 });",
    },
    Doc {
        name: "sample",
        signature: "sample(m, latent, opts) -> Tensor",
        summary: "KSamplerAdvanced: samples `latent` with `m` over the steps [start, end) of a `steps`-step schedule. Shows a progress bar on a terminal; Ctrl-C stops between steps.",
        options: &[
            o("positive", "required", "the text context tensor (encode_text)"),
            o("negative", "-", "the negative context; needed when cfg != 1"),
            o("steps", "20", "steps of the whole schedule"),
            o("start", "0", "first step to run"),
            o("end", "steps", "step to stop at"),
            o("cfg", "3.5", "classifier-free guidance scale (1: no negative pass)"),
            o("sampler", "\"euler\"", "a ComfyUI sampler name, or unipc_flow"),
            o("scheduler", "\"simple\"", "a ComfyUI scheduler, or fm_euler/fm_unipc/wan_unipc"),
            o("shift", "8.0", "flow shift"),
            o("seed", "0", "noise seed (torch.manual_seed compatible)"),
            o("add_noise", "true", "add the seeded noise at the first sigma"),
            o("leftover_noise", "false", "keep the last sigma (for a second pass) instead of 0"),
            o("sigmas", "-", "an explicit sigma list; overrides steps/scheduler/shift"),
            o("noise", "-", "a noise tensor; overrides the seed"),
            o("state", "-", "a sampler_state() to continue a multistep history"),
            o("image_cond", "-", "an I2V expert's image conditioning (image_to_video / first_last_to_video `.image_cond`); required by a 36-channel model, refused by others"),
            o("noise_mask", "-", "TI2V's mask (ti2v_latent `.noise_mask`): frames where it is 0 stay the input latent, clean, at timestep 0"),
        ],
        example: "x = sample(high, x, #{ positive: pos, negative: neg, steps: 20, end: 10, seed: 42, leftover_noise: true });",
    },
    Doc {
        name: "schedule",
        signature: "schedule(opts) -> array of floats",
        summary: "The sigma list `sample` would use.",
        options: &[
            o("scheduler", "\"simple\"", "schedule name"),
            o("steps", "20", "steps"),
            o("shift", "8.0", "flow shift"),
            o("sampler", "\"euler\"", "uni_pc and dpm_2 get ComfyUI's discard-penultimate list"),
        ],
        example: "let s = schedule(#{ scheduler: \"simple\", steps: 20, shift: 8.0 });",
    },
    Doc {
        name: "sampler_state",
        signature: "sampler_state() -> SamplerState",
        summary: "An empty solver history; pass the same one to consecutive `sample` passes to continue the multistep solver across experts.",
        options: &[],
        example: "let st = sampler_state();",
    },
    Doc {
        name: "boundary_step",
        signature: "boundary_step(sigmas, ratio) -> int",
        summary: "Steps that go to the high-noise expert under diffusers' rule (timestep >= ratio*1000; 0.875 T2V, 0.9 I2V).",
        options: &[],
        example: "let split = boundary_step(schedule(#{ steps: 20 }), 0.875);",
    },
    Doc {
        name: "last_sample",
        signature: "last_sample() -> map",
        summary: "The last sample call: `steps`, `model_calls`, `streamed` bytes, `seconds`.",
        options: &[],
        example: "print(last_sample().seconds);",
    },
    // ---- text
    Doc {
        name: "encode_text",
        signature: "encode_text(te, text[, opts]) -> Tensor",
        summary: "umT5 context as Wan hands it to the DiT: the prompt's rows, zero-padded; a prompt over 512 tokens is cut with a warning.",
        options: &[
            o("clean", "true", "Wan's prompt cleaning"),
            o("rows", "512", "rows to pad to"),
        ],
        example: "let pos = encode_text(te, \"a red fox running through snow\");",
    },
    Doc {
        name: "tokenize",
        signature: "tokenize(te, text[, opts]) -> map",
        summary: "`#{ ids, mask, dropped }` with the encoder's SentencePiece tokenizer (EOS appended).",
        options: &[
            o("clean", "true", "Wan's prompt cleaning"),
            o("max_len", "512", "tokens kept"),
        ],
        example: "let t = tokenize(te, \"a fox\");",
    },
    Doc {
        name: "encode_ids",
        signature: "encode_ids(te, ids, mask) -> Tensor",
        summary: "The encoder's last hidden state [B, L, d_model] for given token ids.",
        options: &[],
        example: "let t = tokenize(te, \"a fox\"); let h = encode_ids(te, t.ids, t.mask);",
    },
    // ---- VAE
    Doc {
        name: "decode",
        signature: "decode(vae, latent[, opts]) -> Tensor",
        summary: "Video [B, 3, F, H, W] in [-1, 1], one latent frame at a time with the causal cache.",
        options: &[
            o("raw", "false", "skip the latent denormalisation (latent*std + mean)"),
            o("clamp", "true", "clamp to [-1, 1]"),
        ],
        example: "let video = decode(vae, x);",
    },
    Doc {
        name: "encode",
        signature: "encode(vae, video[, opts]) -> Tensor",
        summary: "The latent mean of a video, normalised to the sampler's space.",
        options: &[o("raw", "false", "skip the normalisation")],
        example: "let z = encode(vae, load_image(\"start.png\"));",
    },
    // ---- memory
    Doc {
        name: "vram",
        signature: "vram() -> map",
        summary: "The ledger: `budget`, `used`, `free`, `offloaded`, `pinned`, `models` (each with state, resident, offloaded, host, blocks, loras). On CUDA also the driver's `driver_free` and `driver_total` (after a synchronise), `driver_held` (its rise since the session started), `gap` (driver minus ledger) and `leak` (true when they are more than 5% apart). Prints as a table.",
        options: &[],
        example: "print(vram());",
    },
    Doc {
        name: "ram",
        signature: "ram() -> map",
        summary: "`rss`, `peak_rss` (from /proc/self/status), `host` (weights in host memory, pinned ones included) and `pinned` (offloaded blocks in page-locked memory for streaming to a card). Prints as a table.",
        options: &[],
        example: "print(ram());",
    },
    Doc {
        name: "vram_budget",
        signature: "vram_budget(size)",
        summary: "Sets the device budget: \"24GiB\", \"200MiB\" or a byte count.",
        options: &[],
        example: "vram_budget(\"24GiB\");",
    },
    Doc {
        name: "reset_peak_rss",
        signature: "reset_peak_rss() -> bool",
        summary: "Resets the kernel's peak RSS counter (false where the kernel refuses).",
        options: &[],
        example: "reset_peak_rss();",
    },
    Doc {
        name: "offload_peak",
        signature: "offload_peak() -> int",
        summary: "Largest offloaded total since reset_offload_peak().",
        options: &[],
        example: "print(mib(offload_peak()));",
    },
    Doc {
        name: "reset_offload_peak",
        signature: "reset_offload_peak()",
        summary: "Starts a new offload_peak() window.",
        options: &[],
        example: "reset_offload_peak();",
    },
    Doc {
        name: "mib",
        signature: "mib(bytes) -> int",
        summary: "Bytes to MiB, rounded.",
        options: &[],
        example: "print(mib(vram().used));",
    },
    // ---- tensors
    Doc {
        name: "zeros",
        signature: "zeros(shape) -> Tensor",
        summary: "An f32 tensor of zeros (at most 2^28 elements).",
        options: &[],
        example: "let z = zeros([1, 16, 21, 60, 104]);",
    },
    Doc {
        name: "zeros_like",
        signature: "zeros_like(t) -> Tensor",
        summary: "Zeros of t's shape and dtype.",
        options: &[],
        example: "let z = zeros_like(x);",
    },
    Doc {
        name: "randn",
        signature: "randn(shape, seed) -> Tensor",
        summary: "Standard normal noise, bit-identical to torch.manual_seed(seed); torch.randn(shape).",
        options: &[],
        example: "let n = randn([1, 16, 21, 60, 104], 42);",
    },
    Doc {
        name: "to_dtype",
        signature: "to_dtype(t, dtype) -> Tensor",
        summary: "Casts to \"f32\", \"f16\" or \"bf16\".",
        options: &[],
        example: "let h = to_dtype(x, \"bf16\");",
    },
    Doc {
        name: "narrow",
        signature: "narrow(t, dim, start, len) -> Tensor",
        summary: "The slice start..start+len along dim.",
        options: &[],
        example: "let first = narrow(x, 2, 0, 1);",
    },
    Doc {
        name: "to_list",
        signature: "to_list(t) -> array of floats",
        summary: "All elements, flattened, as f64.",
        options: &[],
        example: "print(to_list(narrow(x, 4, 0, 2)));",
    },
    Doc {
        name: "rel_l2",
        signature: "rel_l2(a, b) -> float",
        summary: "||a - b|| / ||b||, computed in f64.",
        options: &[],
        example: "print(rel_l2(x, y));",
    },
    Doc {
        name: "max_abs",
        signature: "max_abs(t) -> float",
        summary: "Largest absolute element.",
        options: &[],
        example: "print(max_abs(x));",
    },
    Doc {
        name: "mean",
        signature: "mean(t) -> float",
        summary: "Mean of all elements.",
        options: &[],
        example: "print(mean(x));",
    },
    Doc {
        name: "Tensor.shape",
        signature: "t.shape -> array of ints",
        summary: "The tensor's dims.",
        options: &[],
        example: "print(x.shape);",
    },
    Doc {
        name: "Tensor.dtype",
        signature: "t.dtype -> string",
        summary: "\"f32\", \"f16\", \"bf16\", ...",
        options: &[],
        example: "print(x.dtype);",
    },
    Doc {
        name: "reshape",
        signature: "reshape(t, dims) -> Tensor",
        summary: "The same elements in a new shape; one dimension may be -1 (inferred), as in torch.",
        options: &[],
        example: "let flat = reshape(x, [16, -1]);",
    },
    Doc {
        name: "matmul",
        signature: "matmul(a, b) -> Tensor",
        summary: "Matrix product as torch.matmul: batch dimensions broadcast, a 1-D operand is a vector; mixed dtypes compute in f32.",
        options: &[],
        example: "let y = matmul(A, reshape(x, [16, -1]));",
    },
    Doc {
        name: "tanh",
        signature: "tanh(t) -> Tensor",
        summary: "Element-wise hyperbolic tangent (numbers keep Rhai's own `tanh`).",
        options: &[],
        example: "let v = tanh(y);",
    },
    Doc {
        name: "exp",
        signature: "exp(t) -> Tensor",
        summary: "Element-wise exponential.",
        options: &[],
        example: "let e = exp(x * -1.0);",
    },
    Doc {
        name: "sqrt",
        signature: "sqrt(t) -> Tensor",
        summary: "Element-wise square root.",
        options: &[],
        example: "let r = sqrt(x * x + 1.0);",
    },
    Doc {
        name: "+",
        signature: "a + b  (tensor + tensor, tensor + number, number + tensor)",
        summary: "Element-wise sum; tensor shapes broadcast as in torch; mixed dtypes compute in f32.",
        options: &[],
        example: "let y = x + 1.0;",
    },
    Doc {
        name: "-",
        signature: "a - b  (tensor - tensor, tensor - number, number - tensor)",
        summary: "Element-wise difference.",
        options: &[],
        example: "let d = x - y;",
    },
    Doc {
        name: "*",
        signature: "a * b  (tensor * tensor, tensor * number, number * tensor)",
        summary: "Element-wise product.",
        options: &[],
        example: "let y = x * 0.5;",
    },
    Doc {
        name: "[]",
        signature: "t[i] -> Tensor",
        summary: "Row i along the first dim (negative i counts from the end).",
        options: &[],
        example: "let first = x[0];",
    },
    Doc {
        name: "load_tensors",
        signature: "load_tensors(path) -> map",
        summary: "A safetensors file as a map of tensors (read under the allowed roots).",
        options: &[],
        example: "let pos = load_tensors(\"prompt.safetensors\")[\"context\"];",
    },
    Doc {
        name: "save_tensors",
        signature: "save_tensors(map, path) -> string",
        summary: "Writes a map of tensors as safetensors under --out, atomically; returns the path.",
        options: &[],
        example: "save_tensors(#{ latent: x }, \"latent.safetensors\");",
    },
    // ---- media
    Doc {
        name: "load_image",
        signature: "load_image(path) -> Tensor",
        summary: "A PNG as [1, 3, 1, H, W] in [-1, 1].",
        options: &[],
        example: "let img = load_image(\"start.png\");",
    },
    Doc {
        name: "save_images",
        signature: "save_images(video, pattern) -> array of paths",
        summary: "One PNG per frame, e.g. \"frames/frame_%04d.png\", under --out, each written atomically.",
        options: &[],
        example: "save_images(video, \"frames/frame_%04d.png\");",
    },
    Doc {
        name: "save_video",
        signature: "save_video(video, path[, opts]) -> string",
        summary: "GIF natively; .mp4/.webm/.mkv/.webp through ffmpeg on PATH. Written atomically under --out.",
        options: &[o("fps", "16", "frames per second")],
        example: "save_video(video, \"clip.gif\", #{ fps: 16 });",
    },
    // ---- image conditioning
    Doc {
        name: "image_to_video",
        signature: "image_to_video(vae, opts) -> map",
        summary: "ComfyUI's WanImageToVideo (Wan 2.2 I2V-A14B): centre-crops and resizes the start image(s), pads the video with grey frames, encodes it with the Wan 2.1 VAE. Returns `latent` (zeros to sample) and `image_cond` (4 mask channels, then the normalised image latent) for `sample`.",
        options: &[
            o("start_image", "required", "the first frame(s): load_image(...)"),
            o("width", "832", "pixels, a multiple of 16"),
            o("height", "480", "pixels, a multiple of 16"),
            o("length", "81", "video frames (4k+1)"),
            o("batch_size", "1", "latent batch"),
        ],
        example: "let c = image_to_video(vae, #{ start_image: load_image(\"cat.png\"), width: 832, height: 480, length: 81 }); let x = sample(high, c.latent, #{ positive: pos, image_cond: c.image_cond });",
    },
    Doc {
        name: "first_last_to_video",
        signature: "first_last_to_video(vae, opts) -> map",
        summary: "ComfyUI's WanFirstLastFrameToVideo: like image_to_video with an end image too (its mask gives the first frame 4 channels and the last frame the last channel). Returns `latent` and `image_cond`.",
        options: &[
            o("start_image", "-", "the first frame(s)"),
            o("end_image", "-", "the last frame(s)"),
            o("width", "832", "pixels, a multiple of 16"),
            o("height", "480", "pixels, a multiple of 16"),
            o("length", "81", "video frames (4k+1)"),
            o("batch_size", "1", "latent batch"),
        ],
        example: "let c = first_last_to_video(vae, #{ start_image: a, end_image: b, length: 81 });",
    },
    Doc {
        name: "ti2v_latent",
        signature: "ti2v_latent(vae, opts) -> map",
        summary: "ComfyUI's Wan22ImageToVideoLatent (TI2V-5B): the start image encoded with the Wan 2.2 VAE as the clean first latent frame(s). Returns `latent` (sampler space) and `noise_mask` (0 on the kept frames) for `sample`; without a start image a zero latent and no mask.",
        options: &[
            o("start_image", "-", "the first frame(s)"),
            o("width", "1280", "pixels, a multiple of 32"),
            o("height", "704", "pixels, a multiple of 32"),
            o("length", "121", "video frames (4k+1)"),
            o("batch_size", "1", "latent batch"),
        ],
        example: "let c = ti2v_latent(vae22, #{ start_image: img, width: 1280, height: 704, length: 121 }); let x = sample(m, c.latent, #{ positive: pos, noise_mask: c.noise_mask });",
    },
    // ---- recipes
    Doc {
        name: "param",
        signature: "param(name, default, help) -> value",
        summary: "Declares a recipe parameter: the value of `--set name=...` (parsed as the default's type: int, float, string or bool), else the default. `baton run FILE --help-recipe` lists them.",
        options: &[],
        example: "let steps = param(\"steps\", 20, \"Total sampling steps\");",
    },
];

/// The entry for `name` (a primitive, `Type.getter`, or a bare getter name
/// when only one type has it).
pub fn find(name: &str) -> Option<&'static Doc> {
    DOCS.iter().find(|d| d.name == name).or_else(|| {
        let mut getters = DOCS
            .iter()
            .filter(|d| d.name.split_once('.').map(|x| x.1) == Some(name));
        let first = getters.next()?;
        getters.next().is_none().then_some(first)
    })
}

/// The option keys `func` accepts, in table order.
pub fn option_keys(func: &str) -> Vec<&'static str> {
    find(func)
        .map(|d| d.options.iter().map(|o| o.key).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_entries_complete() {
        let mut seen = std::collections::HashSet::new();
        for d in DOCS {
            assert!(seen.insert(d.name), "duplicate doc entry {}", d.name);
            assert!(!d.summary.is_empty() && !d.example.is_empty(), "{}", d.name);
            assert!(
                d.signature
                    .contains(d.name.rsplit('.').next().unwrap().trim_matches(['[', ']'])),
                "{}",
                d.name
            );
        }
    }

    #[test]
    fn bare_getter_names_resolve_only_when_unambiguous() {
        assert_eq!(find("shape").unwrap().name, "Tensor.shape");
        assert!(find("dtype").is_none());
        assert_eq!(find("sample").unwrap().name, "sample");
        assert!(option_keys("sample").contains(&"leftover_noise"));
    }
}
