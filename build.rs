//! Only the `onednn` feature needs anything here: where `libdnnl` (oneDNN
//! 3.x) lives when it is not on the system's library path. `ONEDNN_DIR`
//! names a prefix with `lib/libdnnl.so` (a venv after
//! `pip install onednn onednn-devel`, or an install of a source build); the
//! binary then finds it, and the libraries it needs beside it, at run time
//! without `LD_LIBRARY_PATH` (an `RPATH`, which unlike `RUNPATH` also serves
//! `libdnnl`'s own dependencies).

fn main() {
    println!("cargo:rerun-if-env-changed=ONEDNN_DIR");
    if std::env::var_os("CARGO_FEATURE_ONEDNN").is_none() {
        return;
    }
    if let Some(dir) = std::env::var_os("ONEDNN_DIR") {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!(
            "cargo:rustc-link-arg=-Wl,--disable-new-dtags,-rpath,{}",
            lib.display()
        );
    }
}
