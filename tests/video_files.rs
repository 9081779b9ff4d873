//! Videos written through the product path (`save_video` -> src/media ->
//! ffmpeg) are what they should be, as ffprobe and ffmpeg read them back:
//! an H.264 mp4 with every frame, the size (odd sizes padded to even) and
//! rate asked for, and the colours of the frames. Needs ffmpeg and ffprobe
//! (`.ci/run` installs them; under CI a missing one fails the test).
mod common;

use candle_core::{Device, Tensor};
use common::{eval, session_with};
use std::path::Path;
use std::process::Command;

/// A [1, 3, frames, h, w] video in [-1, 1]: every pixel (r, g, b).
fn solid(frames: usize, h: usize, w: usize, rgb: [f32; 3]) -> Tensor {
    let plane = h * w * frames;
    let v: Vec<f32> = rgb
        .iter()
        .flat_map(|c| std::iter::repeat_n(*c, plane))
        .collect();
    Tensor::from_vec(v, (1, 3, frames, h, w), &Device::Cpu).unwrap()
}

fn probe(path: &Path) -> serde_json::Value {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames,avg_frame_rate,pix_fmt",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .expect("running ffprobe");
    assert!(
        o.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["streams"][0].clone()
}

/// The mean (r, g, b) of the first frame, decoded by ffmpeg.
fn first_frame_mean(path: &Path) -> [f64; 3] {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        .output()
        .expect("running ffmpeg");
    assert!(
        o.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let px = o.stdout.len() / 3;
    let mut sum = [0f64; 3];
    for p in o.stdout.chunks_exact(3) {
        for c in 0..3 {
            sum[c] += p[c] as f64;
        }
    }
    sum.map(|s| s / px as f64)
}

fn write_mp4(h: usize, w: usize, name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let out = tempfile::tempdir().unwrap();
    let mut s = session_with(None, out.path());
    // Red: r = 1, g = b = -1 in the decoder's [-1, 1] range.
    s.scope.push("video", solid(9, h, w, [1.0, -1.0, -1.0]));
    let written = eval(
        &mut s,
        &format!(r#"save_video(video, "{name}", #{{ fps: 8 }})"#),
    )
    .to_string();
    let path = out.path().join(name);
    assert_eq!(Path::new(&written), path.as_path());
    assert!(path.is_file());
    (out, path)
}

#[test]
fn save_video_writes_an_h264_mp4_with_every_frame() {
    if !common::tools::available("ffmpeg", &["-version"])
        || !common::tools::available("ffprobe", &["-version"])
    {
        return;
    }
    let (_out, path) = write_mp4(32, 48, "clip.mp4");
    let st = probe(&path);
    assert_eq!(st["codec_name"], "h264", "{st}");
    assert_eq!(st["pix_fmt"], "yuv420p", "{st}");
    assert_eq!(
        (st["width"].as_u64(), st["height"].as_u64()),
        (Some(48), Some(32)),
        "{st}"
    );
    assert_eq!(st["nb_read_frames"], "9", "{st}");
    assert_eq!(st["avg_frame_rate"], "8/1", "{st}");
    let [r, g, b] = first_frame_mean(&path);
    assert!(
        r > 230.0 && g < 25.0 && b < 25.0,
        "first frame mean rgb {r:.1} {g:.1} {b:.1}"
    );
}

#[test]
fn odd_sizes_are_padded_to_even_for_h264() {
    if !common::tools::available("ffmpeg", &["-version"])
        || !common::tools::available("ffprobe", &["-version"])
    {
        return;
    }
    let (_out, path) = write_mp4(33, 47, "odd.mp4");
    let st = probe(&path);
    assert_eq!(
        (st["width"].as_u64(), st["height"].as_u64()),
        (Some(48), Some(34)),
        "{st}"
    );
    assert_eq!(st["nb_read_frames"], "9", "{st}");
}
