//! LightGBM's C API, one of two ways.
//!
//! - Default: `bindings.rs` is the file lightgbm3-sys 1.0.11's build script generates with
//!   bindgen from LightGBM 4.7.0's `c_api.h`, committed, and `build.rs` links the prebuilt
//!   `lib_lightgbm.so` of PyPI's `lightgbm==4.7.0` wheel (the same sources, byte for byte).
//!   Compiling LightGBM took about 400 s of the 1,340 s of CPU of a fresh release build on 2
//!   cores, and bindgen needed libclang (BENCHMARKS.md). No crate links a prebuilt LightGBM,
//!   hence this one.
//! - `static`: lightgbm3-sys itself, which compiles LightGBM from source and links it into the
//!   binary. scripts/package.sh builds the wheels so, and checks there that its freshly
//!   generated bindings are still `bindings.rs`, byte for byte.

#[cfg(feature = "static")]
pub use lightgbm3_sys::*;

#[cfg(not(feature = "static"))]
pub use prebuilt::*;

#[cfg(not(feature = "static"))]
#[allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    clippy::all
)]
mod prebuilt {
    include!("bindings.rs");
}
