//! Links the prebuilt `lib_lightgbm.so` named by `LIGHTGBM_LIB_DIR` (scripts/setup.sh fetches
//! PyPI's `lightgbm` wheel into `.tools/` and sets it in `.cargo/config.toml`). With the
//! `static` feature lightgbm3-sys compiles and links LightGBM, and there is nothing to do here.
use std::env;
use std::fs;
use std::path::{Path, PathBuf};

/// The LightGBM release whose `c_api.h` `src/bindings.rs` was generated from.
const LIGHTGBM_VERSION: &str = "4.7.0";
const LIBRARY: &str = "lib_lightgbm.so";

fn main() {
    println!("cargo:rerun-if-env-changed=LIGHTGBM_LIB_DIR");
    if env::var_os("CARGO_FEATURE_STATIC").is_some() {
        return;
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    if let Err(message) = link_prebuilt(&out_dir) {
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

fn link_prebuilt(out_dir: &Path) -> Result<(), String> {
    let lib_dir = env::var_os("LIGHTGBM_LIB_DIR")
        .map(PathBuf::from)
        .ok_or_else(|| {
            format!(
                "LIGHTGBM_LIB_DIR is not set. Run scripts/setup.sh: it fetches PyPI's \
             lightgbm=={LIGHTGBM_VERSION} wheel into .tools/ and sets LIGHTGBM_LIB_DIR in \
             .cargo/config.toml. Or set it to the folder of a {LIBRARY} of LightGBM \
             {LIGHTGBM_VERSION}, or build with `--features static-lightgbm` to compile LightGBM \
             from source (needs CMake >= 3.28 and libclang)."
            )
        })?;
    let library = lib_dir.join(LIBRARY);
    if !library.is_file() {
        return Err(format!(
            "LIGHTGBM_LIB_DIR={} has no {LIBRARY}: rerun scripts/setup.sh",
            lib_dir.display()
        ));
    }
    // The wheel keeps its version beside `lib/`: a library of another release could differ
    // from the committed bindings in a signature, which no linker would notice.
    let version_file = lib_dir.join("../VERSION.txt");
    match fs::read_to_string(&version_file) {
        Ok(version) if version.trim() == LIGHTGBM_VERSION => {}
        Ok(version) => {
            return Err(format!(
                "{} says LightGBM {}, but the bindings are LightGBM {LIGHTGBM_VERSION}'s: \
                 rerun scripts/setup.sh",
                version_file.display(),
                version.trim()
            ))
        }
        Err(_) => println!(
            "cargo:warning=no {} to check that {} is LightGBM {LIGHTGBM_VERSION}, the \
             bindings' version",
            version_file.display(),
            library.display()
        ),
    }
    println!("cargo:rerun-if-changed={}", library.display());
    println!("cargo:rerun-if-changed={}", version_file.display());
    // A copy inside the target directory: cargo puts the link-search folders that lie there on
    // the library path of what it runs (`cargo run`, `cargo test`, benches). The binary itself
    // also gets an rpath to LIGHTGBM_LIB_DIR (the root package's build.rs).
    let copy_dir = out_dir.join("lib");
    fs::create_dir_all(&copy_dir)
        .map_err(|e| format!("cannot create {}: {e}", copy_dir.display()))?;
    fs::copy(&library, copy_dir.join(LIBRARY)).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            library.display(),
            copy_dir.display()
        )
    })?;
    println!("cargo:rustc-link-search=native={}", copy_dir.display());
    println!("cargo:rustc-link-lib=dylib=_lightgbm");
    Ok(())
}
