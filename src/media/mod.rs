//! Frames in and out: PNG sequences, animated GIF, and mp4/webm/webp through
//! an `ffmpeg` found on PATH. Every file is written to a temporary name in its
//! target directory and renamed into place, so an interrupted run never
//! leaves a half-written output.

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::io::Write;
use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, String>;

/// The frames of a video tensor `[B, 3, F, H, W]` (or `[3, F, H, W]`) with
/// values in [-1, 1], as 8-bit RGB images: batch by batch, frame by frame.
pub fn frames_from_video(video: &Tensor) -> Result<Vec<RgbImage>> {
    let v = match video.rank() {
        4 => video.unsqueeze(0).map_err(err)?,
        5 => video.clone(),
        _ => {
            return Err(format!(
                "expected a video [B, 3, F, H, W] or [3, F, H, W], got {:?}",
                video.dims()
            ))
        }
    };
    let (b, c, f, h, w) = v.dims5().map_err(err)?;
    if c != 3 {
        return Err(format!(
            "expected 3 colour channels, got {:?}",
            video.dims()
        ));
    }
    if b * f == 0 || h == 0 || w == 0 {
        return Err(format!("the video {:?} has no pixels", video.dims()));
    }
    // [B, F, H, W, 3] in u8: (x + 1) · 127.5, clamped, rounded.
    let px = ((v.to_dtype(DType::F32).map_err(err)? + 1.0).map_err(err)? * 127.5)
        .and_then(|t| t.clamp(0f32, 255f32)?.round()?.to_dtype(DType::U8))
        .and_then(|t| t.permute((0, 2, 3, 4, 1))?.contiguous())
        .and_then(|t| t.flatten_all()?.to_vec1::<u8>())
        .map_err(err)?;
    let frame = h * w * 3;
    Ok(px
        .chunks_exact(frame)
        .map(|c| RgbImage::from_raw(w as u32, h as u32, c.to_vec()).expect("exact size"))
        .collect())
}

/// An image file as a one-frame video `[1, 3, 1, H, W]` in [-1, 1].
pub fn load_image(path: &Path) -> Result<Tensor> {
    let img = image::open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .to_rgb8();
    let (w, h) = (img.width() as usize, img.height() as usize);
    let t = Tensor::from_vec(img.into_raw(), (h, w, 3), &Device::Cpu).map_err(err)?;
    t.permute((2, 0, 1))
        .and_then(|t| t.to_dtype(DType::F32)? / 127.5)
        .and_then(|t| t - 1.0)
        .and_then(|t| t.reshape((1, 3, 1, h, w)))
        .map_err(err)
}

/// Writes `frames` as numbered PNGs. `pattern` holds a printf-style counter
/// (`frame_%04d.png`); without one, `_%04d` goes before the extension.
pub fn save_png_sequence(frames: &[RgbImage], pattern: &Path) -> Result<Vec<PathBuf>> {
    let pattern = pattern.to_string_lossy().to_string();
    let pattern = if find_counter(&pattern).is_some() {
        pattern
    } else {
        let stem = pattern.strip_suffix(".png").unwrap_or(&pattern);
        format!("{stem}_%04d.png")
    };
    // Rust's formatter panics on widths over 65535; no file name needs 32.
    if let Some((_, _, w)) = find_counter(&pattern).filter(|c| c.2 > MAX_COUNTER_WIDTH) {
        return Err(format!(
            "{pattern}: the frame counter is {w} digits wide; at most {MAX_COUNTER_WIDTH}"
        ));
    }
    let mut written = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let path = PathBuf::from(expand_counter(&pattern, i));
        write_atomically(&path, |tmp| {
            f.save_with_format(tmp, image::ImageFormat::Png)
                .map_err(|e| e.to_string())
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Writes a video: `.gif` natively, `.mp4`/`.webm`/`.mkv`/`.webp` through ffmpeg.
pub fn save_video(frames: &[RgbImage], path: &Path, fps: f64) -> Result<()> {
    if frames.is_empty() {
        return Err("no frames to write".into());
    }
    if !(fps > 0.0 && fps <= 1000.0) {
        return Err(format!("fps must be in (0, 1000], got {fps}"));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "gif" => write_atomically(path, |tmp| save_gif(frames, tmp, fps)),
        "mp4" | "webm" | "mkv" | "webp" => {
            let ffmpeg = find_ffmpeg().ok_or_else(|| {
                format!(
                    "{}: writing .{ext} needs ffmpeg on PATH, and none was found; \
                     save as .gif or PNG frames (save_images) instead",
                    path.display()
                )
            })?;
            write_atomically(path, |tmp| {
                save_with_ffmpeg(&ffmpeg, frames, tmp, fps, &ext)
            })
        }
        other => Err(format!(
            "{}: unknown video extension '{other}' (use .mp4, .webm, .mkv, .webp through ffmpeg, \
             or .gif; save_images writes PNG frames)",
            path.display()
        )),
    }
}

fn save_gif(frames: &[RgbImage], path: &Path, fps: f64) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let file = std::fs::File::create(path).map_err(|e| e.to_string())?;
    let mut enc = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
    enc.set_repeat(Repeat::Infinite)
        .map_err(|e| e.to_string())?;
    // GIF delays are in hundredths of a second.
    let delay = image::Delay::from_numer_denom_ms((1000.0 / fps).round() as u32, 1);
    for f in frames {
        let rgba = image::DynamicImage::ImageRgb8(f.clone()).to_rgba8();
        enc.encode_frame(image::Frame::from_parts(rgba, 0, 0, delay))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The first `ffmpeg` on PATH.
pub fn find_ffmpeg() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("ffmpeg"))
        .find(|p| p.is_file())
}

/// Pipes raw RGB frames into ffmpeg with fixed arguments: only the frame size,
/// rate and output path vary, never anything a script can inject.
fn save_with_ffmpeg(
    ffmpeg: &Path,
    frames: &[RgbImage],
    path: &Path,
    fps: f64,
    ext: &str,
) -> Result<()> {
    let (w, h) = frames[0].dimensions();
    let codec: &[&str] = match ext {
        "webm" => &["-c:v", "libvpx-vp9", "-b:v", "0", "-crf", "30"],
        "webp" => &["-c:v", "libwebp", "-lossless", "0", "-loop", "0"],
        // H.264 in 4:2:0 needs even sizes; pad by one pixel when odd.
        _ => &[
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        ],
    };
    let mut child = std::process::Command::new(ffmpeg)
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo"])
        .args(["-pix_fmt", "rgb24", "-s", &format!("{w}x{h}")])
        .args(["-r", &format!("{fps}"), "-i", "-"])
        .args(codec)
        .args(["-f", ffmpeg_format(ext)])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting ffmpeg: {e}"))?;
    {
        let mut stdin = child.stdin.take().expect("piped");
        for f in frames {
            if f.dimensions() != (w, h) {
                return Err("frames differ in size".into());
            }
            if stdin.write_all(f.as_raw()).is_err() {
                break; // ffmpeg exited; its stderr says why
            }
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ffmpeg: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ffmpeg failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

fn ffmpeg_format(ext: &str) -> &'static str {
    match ext {
        "webm" => "webm",
        "webp" => "webp",
        "mkv" => "matroska",
        _ => "mp4",
    }
}

/// Writes through `f` into a temporary file beside `path`, then renames it
/// into place: readers see the old file or the whole new one, never a part.
pub fn write_atomically(path: &Path, f: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Keep the extension: encoders and ffmpeg pick the format from it.
    let suffix = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(".baton-")
        .suffix(&suffix)
        .tempfile_in(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    f(tmp.path()).map_err(|e| format!("{}: {e}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// Widest `%0Nd` frame counter accepted.
const MAX_COUNTER_WIDTH: usize = 32;

/// Finds `%d` or `%0Nd` in a pattern: (start, end, width).
fn find_counter(p: &str) -> Option<(usize, usize, usize)> {
    let start = p.find('%')?;
    let rest = &p[start + 1..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if !rest[digits.len()..].starts_with('d') {
        return None;
    }
    let width = digits.trim_start_matches('0').parse().unwrap_or(0);
    Some((start, start + 1 + digits.len() + 1, width))
}

fn expand_counter(p: &str, i: usize) -> String {
    match find_counter(p) {
        Some((a, b, w)) => format!("{}{:0w$}{}", &p[..a], i, &p[b..], w = w),
        None => p.to_string(),
    }
}

fn err(e: candle_core::Error) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_expand() {
        assert_eq!(expand_counter("out/f_%04d.png", 7), "out/f_0007.png");
        assert_eq!(expand_counter("f%d.png", 12), "f12.png");
        assert!(find_counter("plain.png").is_none());
        assert!(find_counter("100%.png").is_none());
    }

    #[test]
    fn an_absurd_counter_width_is_an_error_not_a_panic() {
        let frames = vec![RgbImage::new(2, 2)];
        let d = tempfile::tempdir().unwrap();
        let e = save_png_sequence(&frames, &d.path().join("f_%065536d.png")).unwrap_err();
        assert!(e.contains("65536 digits"), "{e}");
    }

    #[test]
    fn video_to_frames_and_back() {
        // Three frames, 2x4 pixels: -1 -> 0, 1 -> 255, 0 -> 128 (127.5 rounds up).
        let v = Tensor::from_vec(
            (0..3 * 3 * 2 * 4)
                .map(|i| [-1f32, 0.0, 1.0][i % 3])
                .collect(),
            (1, 3, 3, 2, 4),
            &Device::Cpu,
        )
        .unwrap();
        let frames = frames_from_video(&v).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].dimensions(), (4, 2));
        let values: Vec<u8> = frames.iter().flat_map(|f| f.as_raw().clone()).collect();
        assert!(values.iter().all(|v| [0u8, 128, 255].contains(v)));
        let dir = tempfile::tempdir().unwrap();
        let paths = save_png_sequence(&frames, &dir.path().join("f_%02d.png")).unwrap();
        assert_eq!(paths[2], dir.path().join("f_02.png"));
        let back = load_image(&paths[1]).unwrap();
        assert_eq!(back.dims(), &[1, 3, 1, 2, 4]);
        let orig = v.narrow(2, 1, 1).unwrap();
        let d = (back - orig).unwrap().abs().unwrap().max_all().unwrap();
        // 8-bit quantisation: at most half a level, 1/255.
        assert!(d.to_scalar::<f32>().unwrap() <= 1.0 / 255.0 + 1e-6);
        save_video(&frames, &dir.path().join("clip.gif"), 16.0).unwrap();
        assert!(dir.path().join("clip.gif").metadata().unwrap().len() > 0);
        // No temporary files are left behind.
        let leftovers = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".baton-")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
