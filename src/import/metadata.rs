//! The workflow JSON inside ComfyUI's outputs.
//!
//! ComfyUI stores the graph it ran next to what it made: PNG text chunks
//! `workflow` (UI form) and `prompt` (API form); WebP EXIF fields written as
//! `workflow:{...}` / `prompt:{...}`; MP4 container metadata tags of the same
//! names. The UI form is preferred, since it carries titles and groups.

use std::io::Cursor;

/// Which kind of file the bytes are.
#[derive(Debug, PartialEq, Eq)]
pub enum Container {
    Json,
    Png,
    Webp,
    Mp4,
}

pub fn sniff(bytes: &[u8]) -> Container {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Container::Png
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Container::Webp
    } else if bytes.len() >= 8 && &bytes[4..8] == b"ftyp" {
        Container::Mp4
    } else {
        Container::Json
    }
}

/// The workflow JSON text carried by `bytes` (a JSON file is returned as is).
pub fn workflow_json(bytes: &[u8], source: &str) -> Result<String, String> {
    let found = match sniff(bytes) {
        Container::Json => {
            let text =
                std::str::from_utf8(bytes).map_err(|e| format!("{source}: not UTF-8 JSON: {e}"))?;
            return Ok(text.trim_start_matches('\u{feff}').to_string());
        }
        Container::Png => png_text(bytes, source)?,
        Container::Webp => riff_chunks(bytes, source)?
            .iter()
            .flat_map(|c| embedded(c))
            .collect(),
        // MP4 metadata atoms (udta/meta/ilst, or ffmpeg's free-form tags)
        // hold the JSON as plain UTF-8 text, so a scan of the bytes finds it
        // wherever the muxer put it.
        Container::Mp4 => embedded(bytes),
    };
    pick(found).ok_or_else(|| {
        format!("{source}: no ComfyUI workflow or prompt in its metadata (was it saved by ComfyUI with metadata on?)")
    })
}

/// (key, json) pairs; the UI workflow first, else the API prompt.
fn pick(found: Vec<(String, String)>) -> Option<String> {
    let get = |k: &str| {
        found
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, j)| j.clone())
    };
    get("workflow").or_else(|| get("prompt"))
}

fn png_text(bytes: &[u8], source: &str) -> Result<Vec<(String, String)>, String> {
    let decoder = png::Decoder::new(Cursor::new(bytes));
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("{source}: bad PNG: {e}"))?;
    // Text chunks may follow the image data; finish() reads them too.
    reader
        .finish()
        .map_err(|e| format!("{source}: bad PNG: {e}"))?;
    let info = reader.info();
    let mut out = Vec::new();
    for c in &info.uncompressed_latin1_text {
        out.push((c.keyword.clone(), c.text.clone()));
    }
    for c in &info.compressed_latin1_text {
        let t = c
            .get_text()
            .map_err(|e| format!("{source}: zTXt chunk {}: {e}", c.keyword))?;
        out.push((c.keyword.clone(), t));
    }
    for c in &info.utf8_text {
        let t = c
            .get_text()
            .map_err(|e| format!("{source}: iTXt chunk {}: {e}", c.keyword))?;
        out.push((c.keyword.clone(), t));
    }
    Ok(out)
}

/// The payloads of a RIFF file's top-level chunks (EXIF, XMP, ...).
fn riff_chunks<'a>(bytes: &'a [u8], source: &str) -> Result<Vec<&'a [u8]>, String> {
    let mut out = Vec::new();
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let start = at + 8;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                format!("{source}: RIFF chunk at byte {at} runs past the end of the file")
            })?;
        out.push(&bytes[start..end]);
        at = end + (size & 1);
    }
    Ok(out)
}

/// Every `workflow` / `prompt` key followed closely by a JSON object that
/// parses: `workflow:{...}` (ComfyUI's EXIF), `"workflow": "{...}"`-free
/// forms in MP4 tags, and `workflow\0{...}`.
fn embedded(bytes: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for key in ["workflow", "prompt"] {
        let k = key.as_bytes();
        let mut from = 0;
        while let Some(pos) = find(&bytes[from..], k).map(|p| p + from) {
            from = pos + k.len();
            // The object starts within a few bytes (a separator, an atom header).
            let window = &bytes[from..bytes.len().min(from + 24)];
            let Some(open) = window.iter().position(|&b| b == b'{') else {
                continue;
            };
            let start = from + open;
            if let Some(end) = object_end(&bytes[start..]) {
                let text = &bytes[start..start + end];
                if let Ok(s) = std::str::from_utf8(text) {
                    if serde_json::from_str::<serde_json::Value>(s).is_ok_and(|v| v.is_object()) {
                        out.push((key.to_string(), s.to_string()));
                        from = start + end;
                    }
                }
            }
        }
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of the JSON object at the start of `b`, by brace matching
/// outside strings.
fn object_end(b: &[u8]) -> Option<usize> {
    let (mut depth, mut in_str, mut esc) = (0usize, false, false);
    for (i, &c) in b.iter().enumerate() {
        if in_str {
            match c {
                _ if esc => esc = false,
                b'\\' => esc = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_matching_skips_strings() {
        let s = br#"{"a": "}{", "b": {"c": "\"}"}} trailing"#;
        assert_eq!(object_end(s), Some(s.len() - " trailing".len()));
        assert_eq!(object_end(b"{\"a\": 1"), None);
    }

    #[test]
    fn embedded_prefers_the_workflow() {
        let bytes = b"xxprompt:{\"1\": {\"class_type\": \"A\"}}\0\0workflow:{\"nodes\": []}yy";
        let found = embedded(bytes);
        assert_eq!(pick(found).as_deref(), Some("{\"nodes\": []}"));
    }
}
