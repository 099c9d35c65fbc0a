//! An rpath to LIGHTGBM_LIB_DIR, so that the binary finds the prebuilt `lib_lightgbm.so`
//! (lightgbm-capi) when run directly and not through cargo. Not with `static-lightgbm`, whose
//! binary has LightGBM inside.
fn main() {
    println!("cargo:rerun-if-env-changed=LIGHTGBM_LIB_DIR");
    if std::env::var_os("CARGO_FEATURE_STATIC_LIGHTGBM").is_some() {
        return;
    }
    // Unset, lightgbm-capi's build stops with what to do.
    if let Some(dir) = std::env::var_os("LIGHTGBM_LIB_DIR") {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,-rpath,{}",
            std::path::Path::new(&dir).display()
        );
    }
}
