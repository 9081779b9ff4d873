//! What baton knows about each ComfyUI node type: the order of its widgets
//! (UI files store widget values by position only) and how it is treated.
//!
//! The orders follow the node definitions in ComfyUI (`nodes.py`,
//! `comfy_extras/nodes_wan.py`, `nodes_hunyuan.py`, `nodes_model_advanced.py`,
//! `nodes_video.py`, `nodes_primitive.py`) and are checked against the
//! official Wan 2.2 templates' values in the tests. A seed widget is followed
//! by the frontend's `control_after_generate`, which the server never sees.

/// The widget names of a node type, in `widgets_values` order.
pub fn widget_names(class: &str) -> Option<&'static [&'static str]> {
    Some(match class {
        "UNETLoader" => &["unet_name", "weight_dtype"],
        "CLIPLoader" => &["clip_name", "type", "device"],
        // ComfyUI-GGUF's loaders (city96/ComfyUI-GGUF `nodes.py`): read as
        // UNETLoader / CLIPLoader after parsing (see [`canonical`]).
        "UnetLoaderGGUF" => &["unet_name"],
        "UnetLoaderGGUFAdvanced" => &[
            "unet_name",
            "dequant_dtype",
            "patch_dtype",
            "patch_on_device",
        ],
        "CLIPLoaderGGUF" => &["clip_name", "type"],
        "VAELoader" => &["vae_name"],
        "LoraLoaderModelOnly" => &["lora_name", "strength_model"],
        "ModelSamplingSD3" => &["shift"],
        "CLIPTextEncode" => &["text"],
        "EmptyHunyuanLatentVideo"
        | "Wan22ImageToVideoLatent"
        | "WanImageToVideo"
        | "WanFirstLastFrameToVideo" => &["width", "height", "length", "batch_size"],
        "LoadImage" => &["image", "upload"],
        "KSampler" => &[
            "seed",
            "control_after_generate",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "denoise",
        ],
        "KSamplerAdvanced" => &[
            "add_noise",
            "noise_seed",
            "control_after_generate",
            "steps",
            "cfg",
            "sampler_name",
            "scheduler",
            "start_at_step",
            "end_at_step",
            "return_with_leftover_noise",
        ],
        "VAEDecode" => &[],
        "CreateVideo" => &["fps"],
        "SaveVideo" => &["filename_prefix", "format", "codec"],
        "SaveAnimatedWEBP" => &["filename_prefix", "fps", "lossless", "quality", "method"],
        "SaveImage" => &["filename_prefix"],
        "PrimitiveInt" => &["value", "control_after_generate"],
        "PrimitiveFloat" | "PrimitiveBoolean" | "PrimitiveString" | "PrimitiveStringMultiline" => {
            &["value"]
        }
        "ComfySwitchNode" => &["switch"],
        _ if is_memory(class) => &[],
        _ => return None,
    })
}

/// Node types that only annotate the canvas.
pub fn is_note(class: &str) -> bool {
    matches!(class, "Note" | "MarkdownNote" | "PrimitiveNote")
}

/// Constants and switches, evaluated at import time.
pub fn is_foldable(class: &str) -> bool {
    matches!(
        class,
        "PrimitiveInt"
            | "PrimitiveFloat"
            | "PrimitiveBoolean"
            | "PrimitiveString"
            | "PrimitiveStringMultiline"
            | "ComfySwitchNode"
    )
}

/// The memory-management nodes people add to ComfyUI graphs to free VRAM
/// between stages. baton's explicit lifetimes replace them: each passes its
/// value through unchanged.
pub fn is_memory(class: &str) -> bool {
    matches!(
        class,
        "UnloadModel"
            | "UnloadAllModels"
            | "DeleteModelPassthrough"
            | "FreeMemory"
            | "FreeMemoryModel"
            | "FreeMemoryCLIP"
            | "FreeMemoryLatent"
            | "FreeMemoryImage"
            | "FreeMemoryConditioning"
            | "FreeMemoryVAE"
            | "VRAMCleanup"
            | "RAMCleanup"
            | "ClearVRAM"
            | "PurgeVRAM"
            | "SoftFullCleanRAMAndVRAM"
    ) || class.starts_with("FreeMemory")
}

/// The node type baton reads a class as: ComfyUI-GGUF's loaders differ from
/// UNETLoader / CLIPLoader only in options that baton does not need
/// (`load_model` reads a `.gguf` by its contents, quantized weights kept).
pub fn canonical(class: &str) -> &str {
    match class {
        "UnetLoaderGGUF" | "UnetLoaderGGUFAdvanced" => "UNETLoader",
        "CLIPLoaderGGUF" => "CLIPLoader",
        other => other,
    }
}

/// Nodes that end a branch: the graph is what they need.
pub fn is_output(class: &str) -> bool {
    matches!(class, "SaveVideo" | "SaveAnimatedWEBP" | "SaveImage")
}

/// Everything the emitter turns into script text.
pub fn is_mapped(class: &str) -> bool {
    widget_names(class).is_some() && !is_foldable(class)
}

/// Why a known-looking node is still unknown, for the error message.
pub fn unsupported_hint(class: &str) -> Option<&'static str> {
    let c = class.to_ascii_lowercase();
    if c.contains("dualcliploader") || c.contains("triplecliploader") {
        Some("Wan takes one umT5 text encoder: use CLIPLoaderGGUF / CLIPLoader")
    } else if c.starts_with("vhs_") {
        Some("VideoHelperSuite: use SaveVideo / save_video")
    } else if c.contains("rife") || c.contains("film vfi") {
        Some("frame interpolation has no baton primitive")
    } else {
        None
    }
}
