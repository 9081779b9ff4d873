//! The umT5 tokenizer: SentencePiece ids, EOS, truncation and padding.
//!
//! baton follows the SentencePiece path with byte fallback, which is what
//! ComfyUI runs (`SPieceTokenizer` over the checkpoint's `spiece_model`) and
//! what the umT5 model was trained with. Official Wan and diffusers load
//! `google/umt5-xxl` through transformers, whose converted `tokenizer.json`
//! has byte fallback off: there every character outside the vocabulary (a run
//! of them, in fact) is one `<unk>` instead of its 1-4 UTF-8 byte pieces. All
//! other ids agree. [`UmT5Tokenizer::without_byte_fallback`] reproduces that
//! path for comparison. Two more transformers-only behaviours are not
//! reproduced: literal `</s>` / `<extra_id_N>` in a prompt become special
//! tokens there, plain text here (as in sentencepiece).
//!
//! Cleaning is separate ([`super::clean_prompt`]): Wan and diffusers clean,
//! ComfyUI does not. ComfyUI also parses its `(text:1.2)` emphasis syntax;
//! baton treats parentheses as text.

use candle_core::{bail, Device, Result, Tensor};
use std::path::Path;

use super::spm::SentencePiece;

/// The longest token sequence Wan's pipelines encode (their `text_len`).
pub const MAX_TOKENS: usize = 512;

/// The ids of one prompt, EOS last, and how many were cut to fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    /// Tokens dropped from the end of the prompt by truncation (0 if none);
    /// the caller warns the user, since the dropped text has no effect.
    pub dropped: usize,
}

impl Tokens {
    pub fn truncated(&self) -> bool {
        self.dropped > 0
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct UmT5Tokenizer {
    spm: SentencePiece,
    eos_id: u32,
    pad_id: u32,
}

impl UmT5Tokenizer {
    /// From the bytes of a SentencePiece model: `spiece.model`, or the
    /// `spiece_model` u8 tensor of a ComfyUI text-encoder checkpoint.
    pub fn from_spiece_bytes(bytes: &[u8]) -> Result<Self> {
        let spm = SentencePiece::from_bytes(bytes)?;
        let Some(eos_id) = spm.eos_id() else {
            bail!("spiece: the model defines no EOS piece; umT5 needs '</s>'")
        };
        // umT5 pads with id 0 (`<pad>`), whatever the model file says.
        let pad_id = spm.pad_id().unwrap_or(0);
        Ok(Self {
            spm,
            eos_id,
            pad_id,
        })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))?;
        Self::from_spiece_bytes(&bytes)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", path.display())))
    }

    /// The transformers `tokenizer.json` behaviour (see the module doc).
    pub fn without_byte_fallback(self) -> Self {
        Self {
            spm: self.spm.without_byte_fallback(),
            ..self
        }
    }

    pub fn sentencepiece(&self) -> &SentencePiece {
        &self.spm
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Ids of `text` (not cleaned) with EOS appended, at most `max_len` of
    /// them: a longer prompt keeps its first `max_len - 1` tokens and EOS, as
    /// transformers truncates (`truncation=True` cuts before the EOS is added).
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Tokens> {
        if max_len == 0 {
            bail!("umt5 tokenizer: max_len must be at least 1 (room for EOS)")
        }
        let mut ids = self.spm.encode(text)?;
        let dropped = (ids.len() + 1).saturating_sub(max_len);
        ids.truncate(max_len - 1);
        ids.push(self.eos_id);
        Ok(Tokens { ids, dropped })
    }

    /// Right-pads a batch with the pad id to the longest prompt or `min_len`,
    /// whichever is more: ids [B, L] u32 and mask [B, L] u32 (1 for real
    /// tokens including EOS). `min_len = 512` is diffusers'
    /// `padding="max_length"` and ComfyUI's `min_length=512`; any `min_len`
    /// gives the same encoder output rows for the real tokens.
    pub fn batch(
        &self,
        prompts: &[Tokens],
        min_len: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        if prompts.is_empty() {
            bail!("umt5 tokenizer: empty batch")
        }
        let len = prompts
            .iter()
            .map(Tokens::len)
            .max()
            .unwrap_or(0)
            .max(min_len)
            .max(1);
        let mut ids = Vec::with_capacity(prompts.len() * len);
        let mut mask = Vec::with_capacity(prompts.len() * len);
        for p in prompts {
            ids.extend_from_slice(&p.ids);
            ids.extend(std::iter::repeat_n(self.pad_id, len - p.len()));
            mask.extend(std::iter::repeat_n(1u32, p.len()));
            mask.extend(std::iter::repeat_n(0u32, len - p.len()));
        }
        Ok((
            Tensor::from_vec(ids, (prompts.len(), len), device)?,
            Tensor::from_vec(mask, (prompts.len(), len), device)?,
        ))
    }
}
