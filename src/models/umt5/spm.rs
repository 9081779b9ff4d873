//! A SentencePiece unigram tokenizer read straight from a `.model` protobuf.
//!
//! umT5's tokenizer is a SentencePiece unigram model with byte fallback.
//! ComfyUI's umT5 checkpoints carry that model inside as a `spiece_model` u8
//! tensor and tokenise with the `sentencepiece` library, so baton reads the same
//! bytes and reproduces the library's `encode`: the `nmt_nfkc` normaliser from
//! the model's precompiled character map (a Darts double-array trie), the
//! optimised unigram Viterbi with its exact f32/f64 score arithmetic, and byte
//! fallback for characters outside the vocabulary. No dependency is needed:
//! the protobuf is a handful of fields.
//!
//! Only what encoding needs is supported. Models of another type (BPE, word,
//! char) or with `treat_whitespace_as_suffix` are refused rather than
//! tokenised differently from the reference.

use candle_core::{bail, Result};
use std::collections::HashMap;

/// `ModelProto.SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceKind {
    fn from_proto(v: u64) -> Result<Self> {
        Ok(match v {
            1 => Self::Normal,
            2 => Self::Unknown,
            3 => Self::Control,
            4 => Self::UserDefined,
            5 => Self::Unused,
            6 => Self::Byte,
            other => bail!("spiece: unknown piece type {other}"),
        })
    }
}

#[derive(Debug, Clone)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// The parsed model: vocabulary, normaliser and the ids encoding needs.
#[derive(Debug, Clone)]
pub struct SentencePiece {
    pieces: Vec<Piece>,
    /// Pieces the Viterbi may use (normal and user-defined) -> id.
    lookup: HashMap<String, u32>,
    /// Longest such piece, in bytes.
    max_piece_bytes: usize,
    /// `<0xNN>` byte pieces, present when the model was trained with byte fallback.
    byte_ids: Option<Box<[u32; 256]>>,
    byte_fallback: bool,
    unk_id: u32,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    min_score: f32,
    max_score: f32,
    normalizer: Normalizer,
}

impl SentencePiece {
    /// Parses a serialized `ModelProto` (the bytes of `spiece.model`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut pieces = Vec::new();
        let mut trainer = TrainerSpec::default();
        let mut norm = NormalizerSpec::default();
        let mut r = Reader::new(bytes);
        while let Some((field, value)) = r.next_field()? {
            match (field, value) {
                (1, Value::Bytes(b)) => pieces.push(parse_piece(b)?),
                (2, Value::Bytes(b)) => trainer = parse_trainer(b)?,
                (3, Value::Bytes(b)) => norm = parse_normalizer(b)?,
                _ => {}
            }
        }
        if pieces.is_empty() {
            bail!("spiece: the model has no pieces (is this a SentencePiece .model file?)")
        }
        if trainer.model_type != 1 {
            bail!(
                "spiece: model type {} is not unigram (1); only unigram models are supported",
                trainer.model_type
            )
        }
        if trainer.treat_whitespace_as_suffix {
            bail!("spiece: treat_whitespace_as_suffix models are not supported")
        }

        let mut lookup = HashMap::new();
        let mut unk_id = None;
        let mut bytes_seen = [None::<u32>; 256];
        let (mut min_score, mut max_score) = (f32::MAX, f32::MIN);
        let mut user_defined = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            let id = i as u32;
            if p.piece.is_empty() {
                bail!("spiece: piece {i} is empty")
            }
            match p.kind {
                PieceKind::Normal | PieceKind::UserDefined => {
                    if lookup.insert(p.piece.clone(), id).is_some() {
                        bail!("spiece: piece '{}' is defined twice", p.piece)
                    }
                    if p.kind == PieceKind::Normal {
                        min_score = min_score.min(p.score);
                        max_score = max_score.max(p.score);
                    } else {
                        user_defined.push(p.piece.clone());
                    }
                }
                PieceKind::Unknown => unk_id = Some(id),
                PieceKind::Byte => {
                    let b = parse_byte_piece(&p.piece).ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "spiece: byte piece '{}' is not of the form <0xNN>",
                            p.piece
                        ))
                    })?;
                    bytes_seen[b as usize] = Some(id);
                }
                PieceKind::Control | PieceKind::Unused => {}
            }
        }
        let unk_id = unk_id.ok_or_else(|| {
            candle_core::Error::Msg("spiece: the model has no <unk> piece".into())
        })?;
        let byte_ids = if bytes_seen.iter().all(Option::is_some) {
            let mut ids = Box::new([0u32; 256]);
            for (slot, id) in ids.iter_mut().zip(bytes_seen) {
                *slot = id.unwrap_or(unk_id);
            }
            Some(ids)
        } else {
            None
        };
        if trainer.byte_fallback && byte_ids.is_none() {
            bail!("spiece: byte_fallback is set but the model lacks some of the 256 byte pieces")
        }
        let id_of =
            |v: i64| -> Option<u32> { (v >= 0 && (v as usize) < pieces.len()).then_some(v as u32) };
        let eos_id = id_of(trainer.eos_id);
        let pad_id = id_of(trainer.pad_id);
        let max_piece_bytes = lookup.keys().map(String::len).max().unwrap_or(1);
        let normalizer = Normalizer::new(norm, user_defined)?;
        Ok(Self {
            pieces,
            lookup,
            max_piece_bytes,
            byte_fallback: trainer.byte_fallback,
            byte_ids,
            unk_id,
            eos_id,
            pad_id,
            min_score,
            max_score,
            normalizer,
        })
    }

    /// Turns byte fallback off: every run of unknown characters becomes one
    /// `<unk>`. This is what transformers' converted `tokenizer.json` does
    /// (it writes `byte_fallback: false` for T5 tokenizers), i.e. the
    /// diffusers / official Wan path; kept to measure the difference.
    pub fn without_byte_fallback(mut self) -> Self {
        self.byte_fallback = false;
        self
    }

    pub fn byte_fallback(&self) -> bool {
        self.byte_fallback
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn piece(&self, id: u32) -> Option<&Piece> {
        self.pieces.get(id as usize)
    }

    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// `</s>` (trainer `eos_id`), if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// `<pad>` (trainer `pad_id`), if the model has one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The normalised text the model sees: NFKC per the character map,
    /// extra whitespace removed, a leading `▁`, spaces as `▁`.
    pub fn normalize(&self, text: &str) -> Result<String> {
        self.normalizer.normalize(text)
    }

    /// Piece ids of `text`, without EOS (`SentencePieceProcessor.encode`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let normalized = self.normalize(text)?;
        let mut ids = Vec::new();
        let mut prev_unk = false;
        for (piece, id) in self.viterbi(&normalized) {
            let unk = id == self.unk_id;
            match (&self.byte_ids, unk && self.byte_fallback) {
                (Some(bytes), true) => ids.extend(piece.bytes().map(|b| bytes[b as usize])),
                _ => {
                    // A run of unknown characters is one <unk> (sentencepiece
                    // merges them; transformers' Unigram fuses them).
                    if !(unk && prev_unk) {
                        ids.push(id);
                    }
                }
            }
            prev_unk = unk;
        }
        Ok(ids)
    }

    /// Best segmentation of normalised text as (piece text, id) pairs, the
    /// unknown characters as single-character `<unk>` pieces.
    ///
    /// Scores mirror sentencepiece's arithmetic: path scores are stored as
    /// f32, a vocabulary candidate is summed and compared in f64 (its score
    /// expression is promoted by the user-defined bonus), the unknown
    /// candidate in f32; ties keep the earlier candidate (shorter piece,
    /// earlier start). Equal scores are common in small vocabularies, so
    /// these details decide real segmentations.
    fn viterbi<'a>(&self, s: &'a str) -> Vec<(&'a str, u32)> {
        #[derive(Clone, Copy)]
        struct Node {
            id: u32,
            score: f32,
            start: Option<usize>,
        }
        let n = s.len();
        let unk_score = self.min_score - 10.0;
        let mut best = vec![
            Node {
                id: 0,
                score: 0.0,
                start: None,
            };
            n + 1
        ];
        let mut start = 0;
        while start < n {
            let till_here = best[start].score;
            let rest = &s[start..];
            let mblen = rest.chars().next().map_or(1, char::len_utf8);
            let mut has_single = false;
            let ends = rest
                .char_indices()
                .skip(1)
                .map(|(i, _)| i)
                .chain(std::iter::once(rest.len()));
            for len in ends {
                if len > self.max_piece_bytes {
                    break;
                }
                let Some(&id) = self.lookup.get(&rest[..len]) else {
                    continue;
                };
                let p = &self.pieces[id as usize];
                let score = if p.kind == PieceKind::UserDefined {
                    len as f64 * f64::from(self.max_score) - 0.1
                } else {
                    f64::from(p.score)
                };
                let cand = score + f64::from(till_here);
                let node = &mut best[start + len];
                if node.start.is_none() || cand > f64::from(node.score) {
                    *node = Node {
                        id,
                        score: cand as f32,
                        start: Some(start),
                    };
                }
                if len == mblen {
                    has_single = true;
                }
            }
            if !has_single {
                let cand = unk_score + till_here;
                let node = &mut best[start + mblen];
                if node.start.is_none() || cand > node.score {
                    *node = Node {
                        id: self.unk_id,
                        score: cand,
                        start: Some(start),
                    };
                }
            }
            start += mblen;
        }
        let mut out = Vec::new();
        let mut end = n;
        while end > 0 {
            let node = best[end];
            // Every end at a character boundary is reached (at least by <unk>).
            let begin = node.start.unwrap_or(0);
            out.push((&s[begin..end], node.id));
            end = begin;
        }
        out.reverse();
        out
    }
}

fn parse_byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

// ---------------------------------------------------------------------------
// normaliser

/// `NormalizerSpec` fields that encoding uses (proto2 defaults when absent).
#[derive(Debug, Clone)]
struct NormalizerSpec {
    charsmap: Vec<u8>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        Self {
            charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// sentencepiece's `Normalizer`: longest-match rewriting through the
/// precompiled character map, then whitespace handling.
#[derive(Debug, Clone)]
struct Normalizer {
    spec: NormalizerSpec,
    /// Darts double-array units.
    trie: Vec<u32>,
    /// NUL-separated replacement strings the trie values point into.
    replacements: Vec<u8>,
    /// User-defined pieces pass through the normaliser untouched.
    user_defined: Vec<String>,
}

/// sentencepiece asks the trie for at most this many prefix matches.
const MAX_TRIE_RESULTS: usize = 32;

impl Normalizer {
    fn new(spec: NormalizerSpec, user_defined: Vec<String>) -> Result<Self> {
        let (trie, replacements) = if spec.charsmap.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let blob = &spec.charsmap;
            if blob.len() < 4 {
                bail!("spiece: precompiled charsmap is truncated")
            }
            let trie_size = u32::from_le_bytes([blob[0], blob[1], blob[2], blob[3]]) as usize;
            if !trie_size.is_multiple_of(4) || trie_size > blob.len() - 4 {
                bail!("spiece: precompiled charsmap has a bad trie size {trie_size}")
            }
            let trie = blob[4..4 + trie_size]
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (trie, blob[4 + trie_size..].to_vec())
        };
        Ok(Self {
            spec,
            trie,
            replacements,
            user_defined,
        })
    }

    /// Darts-clone `commonPrefixSearch`: (value, length) of every key that is
    /// a prefix of `key`, shortest first. Out-of-range units (a corrupt map)
    /// end the search instead of panicking.
    fn prefix_matches(&self, key: &[u8]) -> Vec<(u32, usize)> {
        let unit = |pos: usize| self.trie.get(pos).copied();
        let offset = |u: u32| ((u >> 10) << ((u & (1 << 9)) >> 6)) as usize;
        let label = |u: u32| u & ((1 << 31) | 0xFF);
        let has_leaf = |u: u32| (u >> 8) & 1 == 1;
        let value = |u: u32| u & ((1 << 31) - 1);
        let mut out = Vec::new();
        let Some(root) = unit(0) else { return out };
        let mut pos = offset(root);
        for (i, &b) in key.iter().enumerate() {
            pos ^= b as usize;
            let Some(u) = unit(pos) else { break };
            if label(u) != b as u32 {
                break;
            }
            pos ^= offset(u);
            if has_leaf(u) {
                let Some(leaf) = unit(pos) else { break };
                if out.len() < MAX_TRIE_RESULTS {
                    out.push((value(leaf), i + 1));
                }
            }
        }
        out
    }

    /// Normalises the first characters of `input`: (replacement, bytes consumed).
    fn normalize_prefix<'a>(&'a self, input: &'a str) -> (&'a [u8], usize) {
        if let Some(u) = self
            .user_defined
            .iter()
            .filter(|u| input.starts_with(u.as_str()))
            .max_by_key(|u| u.len())
        {
            return (&input.as_bytes()[..u.len()], u.len());
        }
        let mut longest: Option<(u32, usize)> = None;
        for (value, len) in self.prefix_matches(input.as_bytes()) {
            if longest.is_none_or(|(_, l)| len > l) {
                longest = Some((value, len));
            }
        }
        match longest {
            Some((value, len)) => {
                let start = (value as usize).min(self.replacements.len());
                let tail = &self.replacements[start..];
                let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
                (&tail[..end], len)
            }
            None => {
                let len = input.chars().next().map_or(0, char::len_utf8);
                (&input.as_bytes()[..len], len)
            }
        }
    }

    fn normalize(&self, text: &str) -> Result<String> {
        const SPACE: &str = "\u{2581}";
        let spec = &self.spec;
        let mut input = text;
        let mut out: Vec<u8> = Vec::with_capacity(text.len() * 3 / 2 + 3);
        // Leading whitespace (after normalisation) is dropped.
        if spec.remove_extra_whitespaces {
            while !input.is_empty() {
                let (rep, len) = self.normalize_prefix(input);
                if rep != b" " {
                    break;
                }
                input = &input[len..];
            }
        }
        if input.is_empty() {
            return Ok(String::new());
        }
        let space: &[u8] = if spec.escape_whitespaces {
            SPACE.as_bytes()
        } else {
            b" "
        };
        if spec.add_dummy_prefix {
            out.extend_from_slice(space);
        }
        let mut prev_space = spec.remove_extra_whitespaces;
        while !input.is_empty() {
            let (mut rep, len) = self.normalize_prefix(input);
            while prev_space && rep.first() == Some(&b' ') {
                rep = &rep[1..];
            }
            if !rep.is_empty() {
                for &b in rep {
                    if b == b' ' {
                        out.extend_from_slice(space);
                    } else {
                        out.push(b);
                    }
                }
                prev_space = rep.last() == Some(&b' ');
            }
            input = &input[len..];
            if !spec.remove_extra_whitespaces {
                prev_space = false;
            }
        }
        if spec.remove_extra_whitespaces {
            while out.ends_with(space) {
                out.truncate(out.len() - space.len());
            }
        }
        String::from_utf8(out).map_err(|_| {
            candle_core::Error::Msg(
                "spiece: the precompiled charsmap produced invalid UTF-8 (corrupt model)".into(),
            )
        })
    }
}

// ---------------------------------------------------------------------------
// protobuf

#[derive(Debug, Clone)]
struct TrainerSpec {
    model_type: u64,
    byte_fallback: bool,
    treat_whitespace_as_suffix: bool,
    eos_id: i64,
    pad_id: i64,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        // proto2 defaults of sentencepiece_model.proto.
        Self {
            model_type: 1,
            byte_fallback: false,
            treat_whitespace_as_suffix: false,
            eos_id: 2,
            pad_id: -1,
        }
    }
}

fn parse_piece(b: &[u8]) -> Result<Piece> {
    let mut piece = None;
    let mut score = 0f32;
    let mut kind = PieceKind::Normal;
    let mut r = Reader::new(b);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (1, Value::Bytes(s)) => {
                piece = Some(String::from_utf8(s.to_vec()).map_err(|_| {
                    candle_core::Error::Msg("spiece: a piece is not valid UTF-8".into())
                })?)
            }
            (2, Value::Fixed32(bits)) => score = f32::from_bits(bits),
            (3, Value::Varint(v)) => kind = PieceKind::from_proto(v)?,
            _ => {}
        }
    }
    let piece =
        piece.ok_or_else(|| candle_core::Error::Msg("spiece: piece without text".into()))?;
    Ok(Piece { piece, score, kind })
}

fn parse_trainer(b: &[u8]) -> Result<TrainerSpec> {
    let mut t = TrainerSpec::default();
    let mut r = Reader::new(b);
    while let Some((field, value)) = r.next_field()? {
        if let Value::Varint(v) = value {
            match field {
                3 => t.model_type = v,
                24 => t.treat_whitespace_as_suffix = v != 0,
                35 => t.byte_fallback = v != 0,
                // int32 fields: negative values are sign-extended varints.
                42 => t.eos_id = v as i64 as i32 as i64,
                43 => t.pad_id = v as i64 as i32 as i64,
                _ => {}
            }
        }
    }
    Ok(t)
}

fn parse_normalizer(b: &[u8]) -> Result<NormalizerSpec> {
    let mut n = NormalizerSpec::default();
    let mut r = Reader::new(b);
    while let Some((field, value)) = r.next_field()? {
        match (field, value) {
            (2, Value::Bytes(m)) => n.charsmap = m.to_vec(),
            (3, Value::Varint(v)) => n.add_dummy_prefix = v != 0,
            (4, Value::Varint(v)) => n.remove_extra_whitespaces = v != 0,
            (5, Value::Varint(v)) => n.escape_whitespaces = v != 0,
            _ => {}
        }
    }
    Ok(n)
}

enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// A minimal protobuf wire-format reader (no groups), bounds-checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                bail!("spiece: truncated protobuf (varint at byte {})", self.pos)
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        bail!("spiece: malformed protobuf varint at byte {}", self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            bail!(
                "spiece: truncated protobuf ({n} bytes at byte {})",
                self.pos
            )
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = tag >> 3;
        let value = match tag & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| {
                    candle_core::Error::Msg("spiece: protobuf length overflows".into())
                })?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            w => bail!("spiece: unsupported protobuf wire type {w} (not a SentencePiece model?)"),
        };
        Ok(Some((field, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x0a",
            b"\x0a\xff\xff\xff\xff\x0f",
            b"not a model at all",
        ] {
            assert!(SentencePiece::from_bytes(bytes).is_err());
        }
    }

    #[test]
    fn byte_pieces_parse() {
        assert_eq!(parse_byte_piece("<0x00>"), Some(0));
        assert_eq!(parse_byte_piece("<0xFF>"), Some(255));
        assert_eq!(parse_byte_piece("<0xF>"), None);
        assert_eq!(parse_byte_piece("x"), None);
    }
}
