//! What a file really is when it is not a safetensors file, from its first
//! bytes, so a wrong file is named for what it is (a GGUF handed to the
//! safetensors reader used to read as "header claims 14 GB").

/// The format of a file starting with `head` (its first 8 bytes), when that
/// is a known format other than safetensors.
pub fn other_format(head: &[u8; 8]) -> Option<&'static str> {
    let starts = |m: &[u8]| head.starts_with(m);
    Some(if starts(super::gguf::MAGIC) {
        "a GGUF file (it loads through the GGUF reader; was it renamed?)"
    } else if starts(b"PK\x03\x04") {
        "a zip archive (a PyTorch .pt/.ckpt/.pth checkpoint?): convert it to safetensors"
    } else if head[0] == 0x80 && (2..=5).contains(&head[1]) {
        "a Python pickle (a legacy PyTorch checkpoint?): convert it to safetensors"
    } else if starts(b"\x89HDF") {
        "an HDF5 file (Keras .h5?)"
    } else if starts(b"\x93NUMPY") {
        "a NumPy .npy array"
    } else if starts(b"\x1f\x8b") {
        "a gzip archive: unpack it first"
    } else if starts(b"version ") {
        "a Git LFS pointer, not the model (fetch it with git lfs pull)"
    } else if starts(b"<!DOCTYP") || starts(b"<html") || starts(b"<HTML") || starts(b"\n<!DOCT") {
        "an HTML page (the download got a web page instead of the model)"
    } else if starts(b"lmgg") || starts(b"ggjt") || starts(b"ggla") || starts(b"ggmf") {
        "a legacy GGML file (pre-GGUF): convert it to GGUF"
    } else {
        return None;
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_formats() {
        assert!(super::other_format(b"GGUF\x03\0\0\0")
            .unwrap()
            .contains("GGUF"));
        assert!(super::other_format(b"PK\x03\x04abcd")
            .unwrap()
            .contains("zip"));
        assert!(super::other_format(b"\x10\0\0\0\0\0\0\0").is_none());
    }
}
