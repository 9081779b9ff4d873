//! Loads that map the checkpoint (`checkpoint::mapped`) with the allocator
//! installed as `baton` installs it: tensors equal the file's values, the
//! ledger matches RSS, a write to a tensor never reaches the file, a buffer
//! that grows moves out of the mapping, a file that ends early is an error,
//! and deleting the model unmaps every page.
//!
//! One test per binary: RSS and the mapped-bytes count are process-wide.

mod common;

use baton::checkpoint::mapped::{self, map_vec, Allocator};
use baton::checkpoint::{CheckpointSource, Header};
use baton::runtime::builtin::{tiny_config, write_tiny};
use candle_core::{DType, Device, Tensor};
use common::rss::{assert_rss_back, assert_rss_grew_by, rss, tolerance, MIB};
use common::{as_f64, eval, run, session_with};
use std::io::Write;

#[global_allocator]
static ALLOC: Allocator = Allocator;

#[test]
fn mapped_loads_match_the_file_and_unmap_on_delete() {
    assert!(
        mapped::enabled(),
        "the allocator is installed, so loads map"
    );
    let dir = tempfile::tempdir().unwrap();

    // A raw file: a 3-byte prefix, so f32 values at offset 3 cannot be
    // mapped (misaligned) and come back as a copy; at offset 4 they map.
    let n = 4 << 20; // 16 MiB of f32
    let values: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
    let raw = dir.path().join("raw.bin");
    let mut f = std::fs::File::create(&raw).unwrap();
    f.write_all(&[1, 2, 3, 4]).unwrap();
    for v in &values {
        f.write_all(&v.to_le_bytes()).unwrap();
    }
    drop(f);
    let file = std::fs::File::open(&raw).unwrap();
    assert!(map_vec::<f32>(&file, 3, n).unwrap().is_none(), "misaligned");

    let before = rss();
    let mut v = map_vec::<f32>(&file, 4, n).unwrap().expect("mapped");
    assert_eq!(v, values);
    let grew = rss() - before;
    assert!(mapped::mapped_bytes() >= 4 * n);
    assert_rss_grew_by(
        grew,
        (4 * n) as f64,
        tolerance((4 * n) as f64),
        "the mapping holds",
    );
    // Copy-on-write: the tensor changes, the file does not.
    v[0] = 42.0;
    v[n - 1] = -1.0;
    let on_disk = std::fs::read(&raw).unwrap();
    assert_eq!(&on_disk[4..8], &values[0].to_le_bytes());
    // Growing moves the values to ordinary memory and unmaps.
    v.push(7.0);
    assert_eq!(mapped::mapped_bytes(), 0);
    assert_eq!((v[0], v[1], v[n - 1], v[n]), (42.0, values[1], -1.0, 7.0));
    drop(v);
    // Past the end of the file: an error, not SIGBUS.
    let err = map_vec::<f32>(&file, 4, n + (1 << 20)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(mapped::mapped_bytes(), 0);

    // A checkpoint: every tensor mapped equals the copy read with the
    // mapping turned off.
    let path = dir.path().join("expert.safetensors");
    write_tiny(&path, &tiny_config(), 7, "test-expert").unwrap();
    let header = Header::read(&path).unwrap();
    let src = CheckpointSource::open(&header, header.tensors.clone()).unwrap();
    let names: Vec<String> = src.entries().keys().cloned().collect();
    let dtypes = [DType::F32, DType::BF16];
    let every_tensor = || -> Vec<Tensor> {
        let each = |k: &String| dtypes.map(|d| src.tensor(k, d, &Device::Cpu).unwrap());
        names.iter().flat_map(each).collect()
    };
    let mapped_ts = every_tensor();
    assert!(mapped::mapped_bytes() > 0);
    // SAFETY: this binary's only test; nothing else reads the environment now.
    std::env::set_var("BATON_LOAD_COPY", "1");
    assert!(!mapped::enabled());
    let copied = every_tensor();
    std::env::remove_var("BATON_LOAD_COPY");
    for (a, b) in mapped_ts.iter().zip(&copied) {
        assert_eq!(a.dtype(), b.dtype());
        let diff = a
            .to_dtype(DType::F64)
            .unwrap()
            .sub(&b.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(diff, 0.0);
    }
    drop((mapped_ts, copied, src));
    assert_eq!(mapped::mapped_bytes(), 0);

    // Through a session: the ledger matches RSS, delete unmaps.
    let model_bytes = std::fs::metadata(&path).unwrap().len() as f64;
    let mut s = session_with(None, dir.path());
    let p = path.display().to_string();
    let warm = format!(
        r#"
        let ctx = randn([1, 16, 4096], 1);
        let x = randn([1, 16, 1, 16, 16], 2);
        let m = load_model("{p}");
        predict(m, x, 500.0, ctx);
        delete_model(m);
        "#
    );
    run(&mut s, &warm);
    assert_eq!(mapped::mapped_bytes(), 0);
    let before = rss();
    run(
        &mut s,
        &format!(r#"let m = load_model("{p}"); let v = predict(m, x, 500.0, ctx);"#),
    );
    let ledger = as_f64(eval(&mut s, "vram().used"));
    let grew = rss() - before;
    println!(
        "model {:.1} MiB; ledger {:.1} MiB; mapped {:.1} MiB; RSS grew {:.1} MiB",
        model_bytes / MIB,
        ledger / MIB,
        mapped::mapped_bytes() as f64 / MIB,
        grew / MIB
    );
    assert!(mapped::mapped_bytes() as f64 >= 0.9 * ledger);
    assert_rss_grew_by(grew, ledger, tolerance(model_bytes), "the ledger counts");
    run(&mut s, "delete_model(m);");
    assert_eq!(mapped::mapped_bytes(), 0);
    assert_rss_back(rss(), before, tolerance(model_bytes), "delete_model");
}
