//! A loaded umT5 text encoder and its tokenizer: prompt in, DiT context out.
//!
//! The tokenizer comes from the checkpoint itself when it carries one
//! (ComfyUI's text-encoder files embed the SentencePiece model as a
//! `spiece_model` u8 tensor), else from a `spiece.model` beside the file, else
//! from the `tokenizer` load option. Without any, `encode_ids` still works.

use super::info::ModelInfo;
use crate::checkpoint::{CheckpointError, CheckpointSource, Header, TensorEntry};
use crate::models::umt5::{self, UmT5Config, UmT5Encoder, UmT5Tokenizer};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Rows of context Wan and diffusers hand the DiT (their `text_len`).
pub const CONTEXT_ROWS: usize = 512;

pub struct TextEncoder {
    pub encoder: UmT5Encoder,
    pub tokenizer: Option<UmT5Tokenizer>,
    /// Where the tokenizer came from, for messages.
    pub tokenizer_from: String,
    /// Where the weights are: ids go there, hidden states come back.
    pub device: Device,
}

/// What `prepare` learned from the header: the mapping and the config.
pub struct Planned {
    pub cfg: UmT5Config,
    pub tensors: BTreeMap<String, TensorEntry>,
    /// The file key of an embedded SentencePiece model, if any.
    pub spiece_key: Option<String>,
    pub info: ModelInfo,
}

/// Whether a header holds a umT5 encoder.
pub fn is_text_encoder(header: &Header) -> bool {
    umt5::layout::is_umt5(header.tensors.keys().map(String::as_str))
}

/// Maps the file's keys, infers the config and checks what we cannot load,
/// from the header alone (nothing is read yet).
pub fn plan(header: &Header, dtype: Option<DType>) -> Result<Planned, CheckpointError> {
    let path = &header.path;
    let config = |reason: String| CheckpointError::Config {
        path: path.clone(),
        reason,
    };
    let keys = || header.tensors.keys().map(String::as_str);
    umt5::layout::check_supported(keys()).map_err(config)?;
    let map = umt5::layout::canonical_map(keys()).map_err(config)?;
    let tensors: BTreeMap<String, TensorEntry> = map
        .iter()
        .map(|(canon, file)| (canon.clone(), header.tensors[file].clone()))
        .collect();
    let cfg = UmT5Config::infer(
        tensors
            .iter()
            .map(|(k, e)| (k.as_str(), e.shape.as_slice())),
    )
    .map_err(config)?;
    let file_dtype = crate::dtype::dominant_of(tensors.values());
    let dtype = dtype.unwrap_or(file_dtype);
    let spiece_key = header
        .tensors
        .keys()
        .find(|k| k.ends_with("spiece_model"))
        .cloned();
    let variant = if cfg.d_model == 4096 && cfg.num_layers == 24 {
        "xxl".to_string()
    } else {
        format!("{}x{}", cfg.num_layers, cfg.d_model)
    };
    let info = ModelInfo {
        arch: "umt5",
        variant,
        layout: "hf",
        dtype,
        params: tensors.values().map(|e| e.numel() as u64).sum(),
        blocks: cfg.num_layers,
    };
    Ok(Planned {
        cfg,
        tensors,
        spiece_key,
        info,
    })
}

/// Reads the weights (and the tokenizer) of a planned encoder.
pub fn load(
    header: &Header,
    p: Planned,
    tokenizer: Option<&Path>,
    dev: &Device,
) -> Result<TextEncoder, String> {
    let mut mapped = p.tensors.clone();
    if let Some(k) = &p.spiece_key {
        mapped.insert(k.clone(), header.tensors[k].clone());
    }
    let source = CheckpointSource::open(header, mapped).map_err(|e| e.to_string())?;
    let vb = source.var_builder(p.info.dtype, dev);
    let encoder = UmT5Encoder::new(&p.cfg, vb).map_err(|e| super::error::plain_error(&e))?;
    let (tokenizer, tokenizer_from) = find_tokenizer(&source, &header.path, &p, tokenizer)?;
    // The weights are copied out; hand the mapped pages back.
    source.release("");
    source.finish_uploads();
    Ok(TextEncoder {
        encoder,
        tokenizer,
        tokenizer_from,
        device: dev.clone(),
    })
}

fn find_tokenizer(
    source: &CheckpointSource,
    path: &Path,
    p: &Planned,
    explicit: Option<&Path>,
) -> Result<(Option<UmT5Tokenizer>, String), String> {
    let from_file = |f: &Path| -> Result<(Option<UmT5Tokenizer>, String), String> {
        let t = UmT5Tokenizer::from_file(f)
            .map_err(|e| format!("{}: {}", f.display(), super::error::plain_error(&e)))?;
        Ok((Some(t), f.display().to_string()))
    };
    if let Some(f) = explicit {
        return from_file(f);
    }
    if let Some(k) = &p.spiece_key {
        let bytes = source.bytes(k)?;
        let t = UmT5Tokenizer::from_spiece_bytes(bytes).map_err(|e| {
            let e = super::error::plain_error(&e);
            format!("{}: the embedded '{k}': {e}", path.display())
        })?;
        return Ok((Some(t), format!("'{k}' inside the checkpoint")));
    }
    let beside: PathBuf = path.with_file_name("spiece.model");
    if beside.is_file() {
        return from_file(&beside);
    }
    Ok((None, "none".into()))
}

/// A prompt as the encoder sees it.
pub struct Encoded {
    /// The DiT context [1, rows, d_model].
    pub context: Tensor,
    /// Real tokens (EOS included).
    pub tokens: usize,
    /// Tokens cut off by the length limit.
    pub dropped: usize,
}

impl TextEncoder {
    fn tokenizer(&self) -> Result<&UmT5Tokenizer, String> {
        self.tokenizer.as_ref().ok_or_else(|| {
            "this text encoder has no tokenizer (none inside the checkpoint, no spiece.model \
             beside it): pass load_model(..., #{ tokenizer: \"path/to/spiece.model\" }), \
             or use encode_ids"
                .to_string()
        })
    }

    /// Token ids [1, L] and mask [1, L] (u32) for `text`, cleaned as Wan's
    /// pipelines clean prompts when `clean`, with EOS, at most `max_len`.
    pub fn tokenize(
        &self,
        text: &str,
        clean: bool,
        max_len: usize,
    ) -> Result<(Tensor, Tensor, usize), String> {
        let tok = self.tokenizer()?;
        let text = if clean {
            umt5::clean_prompt(text)
        } else {
            text.to_string()
        };
        let plain = |e: candle_core::Error| super::error::plain_error(&e);
        let t = tok.encode(&text, max_len).map_err(plain)?;
        let dropped = t.dropped;
        let (ids, mask) = tok.batch(&[t], 1, &Device::Cpu).map_err(plain)?;
        Ok((ids, mask, dropped))
    }

    /// The encoder's last hidden state for ids and mask [B, L].
    pub fn encode_ids(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor, String> {
        let dev = &self.device;
        (|| {
            self.encoder
                .forward(&ids.to_device(dev)?, &mask.to_device(dev)?)?
                .to_device(&Device::Cpu)
        })()
        .map_err(|e| super::error::plain_error(&e))
    }

    /// The context Wan and diffusers hand the DiT: the prompt's rows,
    /// zero-padded to `rows` (512).
    pub fn encode_text(&self, text: &str, clean: bool, rows: usize) -> Result<Encoded, String> {
        let (ids, mask, dropped) = self.tokenize(text, clean, rows)?;
        let hidden = self.encode_ids(&ids, &mask)?;
        let context = umt5::pipeline_context(&hidden, &mask, rows)
            .map_err(|e| super::error::plain_error(&e))?;
        Ok(Encoded {
            context,
            tokens: ids.dim(1).unwrap_or(0),
            dropped,
        })
    }
}
