//! Finds and opens the CUDA libraries before candle first uses a GPU.
//!
//! The CUDA build opens the NVIDIA driver, cuBLAS and cuRAND at run time (cudarc's dynamic
//! loading; scripts/build_cuda.sh), so that it starts without them. cudarc itself would look
//! only on the system's library path and panic when a library is missing. This module looks
//! where `pip` puts NVIDIA's libraries too (the `nvidia-cublas-cu12` and `nvidia-curand-cu12`
//! wheels the CUDA wheel depends on, PyTorch's own), opens each by path, and names what is
//! missing in one line. Once a library is open, cudarc's lookup by soname finds it (with the
//! patch scripts/cudarc-0.19.10-sonames-first.patch).
//!
//! Written by hand: no crate looks in Python environments for NVIDIA's wheels. PyTorch does
//! the same in Python (`torch/__init__.py`, `_preload_cuda_deps`: `nvidia/<lib>/lib` under
//! each site-packages folder).
use std::ffi::{CStr, CString, OsString};
use std::path::{Path, PathBuf};

/// The CUDA major version the binary's bindings were built for (`CUDARC_CUDA_VERSION`, set by
/// scripts/build_cuda.sh, e.g. 12000); 12 where it was not set.
fn cuda_major() -> u32 {
    option_env!("CUDARC_CUDA_VERSION")
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(12, |v| v / 1000)
}

/// A library the CUDA backend needs: its file name (soname), what it is, and the pip package
/// that brings it.
struct Needed {
    soname: String,
    what: &'static str,
    package: String,
}

/// cuBLASLt before cuBLAS, which needs it; cuRAND's soname is `.so.10` in CUDA 12 and 13.
fn needed_libraries(major: u32) -> Vec<Needed> {
    // CUDA 13's wheels dropped the `-cuXX` suffix of the package names.
    let package = |name: &str| match major {
        12 => format!("nvidia-{name}-cu12"),
        _ => format!("nvidia-{name}"),
    };
    vec![
        Needed {
            soname: format!("libcublasLt.so.{major}"),
            what: "cuBLASLt",
            package: package("cublas"),
        },
        Needed {
            soname: format!("libcublas.so.{major}"),
            what: "cuBLAS",
            package: package("cublas"),
        },
        Needed {
            soname: "libcurand.so.10".into(),
            what: "cuRAND",
            package: package("curand"),
        },
    ]
}

/// The `nvidia/*/lib` folders of the Python environments this binary may be installed in, in
/// the order they are searched:
/// - the site-packages folder that holds the binary (a wheel installs the binary into
///   `site-packages/ensemble.scripts/`),
/// - `lib*/python3*/{site,dist}-packages` under the binary's prefix (`PREFIX/bin/ensemble`),
///   `$VIRTUAL_ENV` and `$CONDA_PREFIX`.
pub fn wheel_library_dirs(
    exe: Option<&Path>,
    env: impl Fn(&str) -> Option<OsString>,
) -> Vec<PathBuf> {
    let prefix_of_exe = exe.and_then(Path::parent).and_then(Path::parent);
    let mut site_dirs: Vec<PathBuf> = prefix_of_exe.map(Path::to_path_buf).into_iter().collect();
    let prefixes = prefix_of_exe.map(Path::to_path_buf).into_iter().chain(
        ["VIRTUAL_ENV", "CONDA_PREFIX"]
            .iter()
            .filter_map(|v| env(v).map(PathBuf::from)),
    );
    for prefix in prefixes {
        for lib in ["lib", "lib64"] {
            for python in sorted_entries(&prefix.join(lib)) {
                let is_python = python
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"));
                if is_python {
                    site_dirs
                        .extend(["site-packages", "dist-packages"].map(|site| python.join(site)));
                }
            }
        }
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for site in site_dirs {
        for package in sorted_entries(&site.join("nvidia")) {
            let lib = package.join("lib");
            if lib.is_dir() && !dirs.contains(&lib) {
                dirs.push(lib);
            }
        }
    }
    dirs
}

/// The entries of `dir`, sorted; none where it cannot be read.
fn sorted_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|read| read.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    entries.sort();
    entries
}

/// Opens `name` (a path, or a soname looked up on the system's library path) for the whole
/// process, with its symbols global, as the dynamic linker would have at start-up.
fn open(name: &str) -> Result<(), String> {
    let c_name = CString::new(name).map_err(|_| format!("{name:?}: contains a NUL byte"))?;
    // SAFETY: `c_name` is a NUL-terminated string that outlives the call. Opening a library
    // runs its initialisers; these are NVIDIA's CUDA libraries, made to be opened this way
    // (cudarc and PyTorch open them with dlopen too). The handle is never closed, so their
    // code stays mapped for the process's lifetime, which cudarc's function pointers need.
    let handle = unsafe { libc::dlopen(c_name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if !handle.is_null() {
        return Ok(());
    }
    // SAFETY: dlerror returns NULL or a pointer to a NUL-terminated message that stays valid
    // until the next dl* call on this thread; it is copied at once.
    let message = unsafe {
        let text = libc::dlerror();
        if text.is_null() {
            "unknown error".to_owned()
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    };
    Err(message)
}

/// Why a library did not open.
#[derive(Debug, PartialEq)]
enum Failure {
    /// In no wheel folder and not on the system's library path.
    NotFound,
    /// Found but it does not load: the file and the loader's reason.
    Broken(String),
}

/// Opens one library: from the first wheel folder that has it, else from the system.
fn open_library(needed: &Needed, dirs: &[PathBuf]) -> Result<(), Failure> {
    if let Some(path) = dirs
        .iter()
        .map(|d| d.join(&needed.soname))
        .find(|p| p.is_file())
    {
        return open(&path.to_string_lossy()).map_err(|e| {
            Failure::Broken(format!(
                "{} ({}) is there but does not load: {e}",
                path.display(),
                needed.what
            ))
        });
    }
    open(&needed.soname).map_err(|_| Failure::NotFound)
}

/// One line for the libraries that were not found: their names, where they were looked for,
/// and the pip packages that bring them.
fn not_found_message(missing: &[&Needed], dirs: &[PathBuf]) -> String {
    let names: Vec<String> = missing
        .iter()
        .map(|n| format!("{} ({})", n.soname, n.what))
        .collect();
    let mut packages: Vec<&str> = missing.iter().map(|n| n.package.as_str()).collect();
    packages.dedup();
    let looked = if dirs.is_empty() {
        "no NVIDIA wheels in a Python environment around this binary".to_owned()
    } else {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "{} not found (looked in: {looked}, then the system's library path: LD_LIBRARY_PATH, \
         ld.so.cache): `pip install {}`, or install CUDA {}'s libraries",
        names.join(", "),
        packages.join(" "),
        cuda_major()
    )
}

/// Opens cuBLAS, cuRAND and the NVIDIA driver, or says in one line which are missing and where
/// they were looked for. Runs once per process; later calls return the first answer.
pub fn load() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let exe = std::env::current_exe().ok();
            let dirs = wheel_library_dirs(exe.as_deref(), |v| std::env::var_os(v));
            let libraries = needed_libraries(cuda_major());
            let (mut not_found, mut missing) = (Vec::new(), Vec::new());
            for needed in &libraries {
                match open_library(needed, &dirs) {
                    Ok(()) => {}
                    Err(Failure::NotFound) => not_found.push(needed),
                    Err(Failure::Broken(message)) => missing.push(message),
                }
            }
            if !not_found.is_empty() {
                missing.insert(0, not_found_message(&not_found, &dirs));
            }
            if let Err(e) = open("libcuda.so.1") {
                missing.push(format!(
                    "no NVIDIA driver: libcuda.so.1 does not load ({e}), so only --device cpu \
                     works here"
                ));
            }
            match missing.is_empty() {
                true => Ok(()),
                false => Err(missing.join("; ")),
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Python prefix with `lib/python3.11/site-packages/nvidia/{cublas,curand}/lib`.
    fn fake_prefix(root: &Path, site: &str) -> PathBuf {
        for package in ["cublas", "curand"] {
            let lib = root
                .join("lib/python3.11")
                .join(site)
                .join("nvidia")
                .join(package)
                .join("lib");
            std::fs::create_dir_all(&lib).unwrap();
        }
        root.to_path_buf()
    }

    #[test]
    fn finds_the_wheels_of_the_binarys_own_environment_then_the_virtualenvs() {
        let tmp = tempfile::tempdir().unwrap();
        // pip's layout for a maturin `bin` wheel: site-packages/ensemble.scripts/ensemble.
        let venv = fake_prefix(&tmp.path().join("venv"), "site-packages");
        let site = venv.join("lib/python3.11/site-packages");
        std::fs::create_dir_all(site.join("ensemble.scripts")).unwrap();
        // Debian's and Kaggle's system Python: dist-packages.
        let conda = fake_prefix(&tmp.path().join("conda"), "dist-packages");
        let env = |name: &str| match name {
            "CONDA_PREFIX" => Some(conda.clone().into_os_string()),
            _ => None,
        };
        let dirs = wheel_library_dirs(Some(&site.join("ensemble.scripts/ensemble")), env);
        let conda_site = conda.join("lib/python3.11/dist-packages");
        assert_eq!(
            dirs,
            [
                site.join("nvidia/cublas/lib"),
                site.join("nvidia/curand/lib"),
                conda_site.join("nvidia/cublas/lib"),
                conda_site.join("nvidia/curand/lib"),
            ]
        );
        // A binary in PREFIX/bin (a venv's bin/, /usr/local/bin) finds its prefix's wheels.
        let dirs = wheel_library_dirs(Some(&venv.join("bin/ensemble")), |_| None);
        assert_eq!(
            dirs,
            [
                site.join("nvidia/cublas/lib"),
                site.join("nvidia/curand/lib")
            ]
        );
        assert!(wheel_library_dirs(None, |_| None).is_empty());
    }

    #[test]
    fn missing_libraries_are_named_with_where_they_were_looked_for() {
        let tmp = tempfile::tempdir().unwrap();
        let needed = |soname: &str, package: &str| Needed {
            soname: soname.into(),
            what: "cuBLAS",
            package: package.into(),
        };
        let (a, b, c) = (
            needed("libensemble-test-absent.so.12", "nvidia-cublas-cu12"),
            needed("libensemble-test-absent-lt.so.12", "nvidia-cublas-cu12"),
            needed("libensemble-test-absent-rand.so.10", "nvidia-curand-cu12"),
        );
        let dirs = [tmp.path().to_path_buf()];
        assert_eq!(open_library(&a, &dirs), Err(Failure::NotFound));
        let message = not_found_message(&[&a, &b, &c], &dirs);
        assert!(
            message.starts_with(
                "libensemble-test-absent.so.12 (cuBLAS), libensemble-test-absent-lt.so.12 \
                 (cuBLAS), libensemble-test-absent-rand.so.10 (cuBLAS) not found (looked in: "
            ) && message.contains(&tmp.path().display().to_string())
                && message.contains("`pip install nvidia-cublas-cu12 nvidia-curand-cu12`"),
            "{message}"
        );
    }

    #[test]
    fn a_library_in_a_wheel_folder_is_opened_by_path() {
        // A real shared library without initialisers of note stands in for cuBLAS: zlib,
        // copied under the soname into a wheel-like folder.
        let zlib = [
            "/lib/x86_64-linux-gnu/libz.so.1",
            "/usr/lib/x86_64-linux-gnu/libz.so.1",
            "/usr/lib64/libz.so.1",
            "/lib64/libz.so.1",
        ]
        .iter()
        .map(Path::new)
        .find(|p| p.is_file());
        let Some(zlib) = zlib else {
            eprintln!("skipped: no libz.so.1 at a known path");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(zlib, tmp.path().join("libensemble-test.so.12")).unwrap();
        let needed = Needed {
            soname: "libensemble-test.so.12".into(),
            what: "cuBLAS",
            package: "nvidia-cublas-cu12".into(),
        };
        open_library(&needed, &[tmp.path().to_path_buf()]).unwrap();
        // A file that is not a library is named with the loader's reason.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("libensemble-test.so.12"), b"not ELF").unwrap();
        match open_library(&needed, &[other.path().to_path_buf()]) {
            Err(Failure::Broken(error)) => {
                assert!(error.contains("is there but does not load"), "{error}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// On this machine as it is: without a driver (CI), one line that names libcuda.so.1 and
    /// each library by file name; with everything there, success. Either way the answer is
    /// given once and kept.
    #[test]
    fn loading_names_each_missing_piece_in_one_line() {
        let first = load();
        assert_eq!(first, load());
        if let Err(message) = first {
            assert!(!message.contains('\n'), "{message}");
            for part in message.split("; ") {
                assert!(part.contains(".so."), "{part}");
            }
            if open("libcuda.so.1").is_err() {
                assert!(
                    message.contains("no NVIDIA driver: libcuda.so.1"),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn library_names_follow_the_builds_cuda_major_version() {
        let names = |major| {
            needed_libraries(major)
                .into_iter()
                .map(|n| (n.soname, n.package))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(12),
            [
                ("libcublasLt.so.12".into(), "nvidia-cublas-cu12".into()),
                ("libcublas.so.12".into(), "nvidia-cublas-cu12".into()),
                ("libcurand.so.10".into(), "nvidia-curand-cu12".to_string()),
            ]
        );
        assert_eq!(
            names(13)[1],
            ("libcublas.so.13".into(), "nvidia-cublas".into())
        );
    }
}
