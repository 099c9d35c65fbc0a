//! Finds and opens the CUDA libraries before candle first uses a GPU.
//!
//! The CUDA build opens the NVIDIA driver, cuBLAS and cuRAND at run time (cudarc's dynamic
//! loading; scripts/build_cuda.sh), so that it starts without them. cudarc itself would look
//! only on the system's library path and panic when a library is missing. This module opens
//! each library by path from the NVIDIA wheels (`nvidia-cublas-cu12`, `nvidia-curand-cu12`)
//! that pip installed beside the CUDA wheel, and names what is missing in one line. Once a
//! library is open, cudarc's lookup by soname finds it (with the patch
//! scripts/cudarc-0.19.10-sonames-first.patch).
//!
//! Each library is opened from the first of these places that has it:
//! 1. The `nvidia/*/lib` folders (sorted) of the Python environment this binary is installed
//!    in. From the binary's own path (`current_exe`, symlinks resolved), with `UP` two folders
//!    above it, the candidates are `UP` itself (`site-packages/<name>.scripts/`, where maturin
//!    puts the binary of a wheel that bundles libraries; scripts/package.sh's do not), then
//!    `UP/{lib,lib64}/python3*/{site,dist}-packages`, sorted (`PREFIX/bin/`: a venv, conda,
//!    `~/.local/bin` of `pip install --user`, `/usr/local/bin`). A candidate counts only if it
//!    is named `site-packages` or `dist-packages` and holds this project's
//!    `<name>-<version>.dist-info` (`[project] name` of the pyproject.toml it was built from:
//!    `arena-ensemble`, or `arena-ensemble-cuda12` for the CUDA wheel, whose copy of the file
//!    scripts/package.sh renames; compared as pip normalizes names).
//! 2. The system's loader, by soname alone: `LD_LIBRARY_PATH`, `/etc/ld.so.cache`, the
//!    default folders.
//!
//! In step 1, a folder is used only if it and each folder from the site-packages folder down
//! to it has an absolute path and is writable by its owner alone (`mode & 0o022 == 0`); the
//! others are passed over, and named if a library is then missing. A library file there that
//! is group- or world-writable is refused. No environment variable is read here:
//! `$VIRTUAL_ENV` and `$CONDA_PREFIX` name the active environment, not necessarily the one
//! holding this binary, which its own location gives. (PyTorch reaches its NVIDIA wheels
//! through `$ORIGIN`-relative RPATHs; a binary with no CUDA library in `DT_NEEDED` cannot.)
use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The pyproject.toml the binary was built from: its `[project] name` is the distribution
/// whose `.dist-info` marks the binary's Python environment (scripts/package.sh builds the
/// CUDA wheel from a copy that names its own distribution).
const PYPROJECT: &str = include_str!("../../pyproject.toml");

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

/// `[project] name` of a pyproject.toml.
fn project_name(pyproject: &str) -> Option<String> {
    let table: toml::Table = pyproject.parse().ok()?;
    Some(table.get("project")?.get("name")?.as_str()?.to_owned())
}

/// A distribution name as pip compares it (PEP 503): lower case, each run of `-`, `_` and `.`
/// one `_`.
fn normalized(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '-' | '_' | '.' if out.ends_with('_') => {}
            '-' | '_' | '.' => out.push('_'),
            c => out.extend(c.to_lowercase()),
        }
    }
    out
}

/// Whether `dir` is trusted: an absolute path to a folder or file that is neither group- nor
/// world-writable (symlinks followed).
fn owner_only(dir: &Path) -> bool {
    dir.is_absolute() && std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o022 == 0)
}

/// Whether `site` is a `site-packages` or `dist-packages` folder holding `distribution`'s
/// `<name>-<version>.dist-info` folder.
fn holds_distribution(site: &Path, distribution: &str) -> bool {
    let is_site = site
        .file_name()
        .is_some_and(|n| n == "site-packages" || n == "dist-packages");
    let wanted = normalized(distribution);
    is_site
        && sorted_entries(site).iter().any(|entry| {
            let name = entry.file_name().map(|n| n.to_string_lossy().into_owned());
            name.as_deref()
                .and_then(|n| n.strip_suffix(".dist-info"))
                .and_then(|stem| stem.split_once('-'))
                .is_some_and(|(n, _)| normalized(n) == wanted)
                && entry.is_dir()
        })
}

/// Where step 1 of the search (module doc) looks, and what it passed over.
#[derive(Debug, Default, PartialEq)]
pub struct WheelDirs {
    /// The `nvidia/*/lib` folders to look in, in order.
    pub dirs: Vec<PathBuf>,
    /// Folders passed over: group- or world-writable, or below such a folder.
    pub untrusted: Vec<PathBuf>,
}

/// Step 1 of the search (module doc) for a binary at `exe` (absolute, symlinks resolved; a
/// relative path finds nothing) shipped in the Python distribution `distribution`.
pub fn wheel_library_dirs(exe: Option<&Path>, distribution: &str) -> WheelDirs {
    let mut found = WheelDirs::default();
    let Some(up) = exe
        .filter(|e| e.is_absolute())
        .and_then(Path::parent)
        .and_then(Path::parent)
    else {
        return found;
    };
    let mut candidates = vec![up.to_path_buf()];
    for lib in ["lib", "lib64"] {
        for python in sorted_entries(&up.join(lib)) {
            let is_python = python
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"));
            if is_python {
                candidates.extend(["site-packages", "dist-packages"].map(|s| python.join(s)));
            }
        }
    }
    // A venv's lib64 is a symlink to lib: each folder once.
    let mut sites: Vec<PathBuf> = Vec::new();
    for site in candidates.iter().filter_map(|c| c.canonicalize().ok()) {
        if !sites.contains(&site) && holds_distribution(&site, distribution) {
            sites.push(site);
        }
    }
    for site in sites {
        if !owner_only(&site) {
            found.untrusted.push(site);
            continue;
        }
        let nvidia = site.join("nvidia");
        if !nvidia.is_dir() {
            continue;
        }
        if !owner_only(&nvidia) {
            found.untrusted.push(nvidia);
            continue;
        }
        for package in sorted_entries(&nvidia) {
            let lib = package.join("lib");
            if !lib.is_dir() || found.dirs.contains(&lib) {
                continue;
            }
            match owner_only(&package) && owner_only(&lib) {
                true => found.dirs.push(lib),
                false => found.untrusted.push(lib),
            }
        }
    }
    found
}

/// Step 1 of the search (module doc) for this process.
fn wheel_library_dirs_of_this_binary() -> WheelDirs {
    let exe = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    match project_name(PYPROJECT) {
        Some(name) => wheel_library_dirs(exe.as_deref(), &name),
        None => WheelDirs::default(),
    }
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
        if !owner_only(&path) {
            return Err(Failure::Broken(format!(
                "{} ({}) is group- or world-writable: not loaded",
                path.display(),
                needed.what
            )));
        }
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

/// One line for the libraries that were not found: their names, where they were looked for
/// (and the folders passed over), and the pip packages that bring them.
fn not_found_message(missing: &[&Needed], wheels: &WheelDirs) -> String {
    let names: Vec<String> = missing
        .iter()
        .map(|n| format!("{} ({})", n.soname, n.what))
        .collect();
    let mut packages: Vec<&str> = missing.iter().map(|n| n.package.as_str()).collect();
    packages.dedup();
    let list = |dirs: &[PathBuf]| {
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut looked = match wheels.dirs.is_empty() {
        true => "no NVIDIA wheels in the Python environment of this binary".to_owned(),
        false => list(&wheels.dirs),
    };
    if !wheels.untrusted.is_empty() {
        looked += &format!(
            " (passed over as group- or world-writable: {})",
            list(&wheels.untrusted)
        );
    }
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
            let wheels = wheel_library_dirs_of_this_binary();
            let libraries = needed_libraries(cuda_major());
            let (mut not_found, mut missing) = (Vec::new(), Vec::new());
            for needed in &libraries {
                match open_library(needed, &wheels.dirs) {
                    Ok(()) => {}
                    Err(Failure::NotFound) => not_found.push(needed),
                    Err(Failure::Broken(message)) => missing.push(message),
                }
            }
            if !not_found.is_empty() {
                missing.insert(0, not_found_message(&not_found, &wheels));
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

    use std::os::unix::fs::PermissionsExt;

    /// Sets the permission bits of `path`.
    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// `root/relative`, made with each missing folder `rwxr-xr-x`, whatever the umask.
    fn mkdirs(root: &Path, relative: &str) -> PathBuf {
        assert!(Path::new(relative).is_relative(), "{relative}");
        let mut dir = root.to_path_buf();
        for part in Path::new(relative).components() {
            dir.push(part);
            if !dir.is_dir() {
                std::fs::create_dir(&dir).unwrap();
                chmod(&dir, 0o755);
            }
        }
        dir
    }

    /// A Python environment under `root`: `site` (relative; empty for `root` itself) with
    /// `nvidia/{cublas,curand}/lib` and, if given, a folder `dist_info`. Returns the site
    /// folder.
    fn fake_site(root: &Path, site: &str, dist_info: Option<&str>) -> PathBuf {
        let site = mkdirs(root, site);
        for package in ["cublas", "curand"] {
            mkdirs(&site, &format!("nvidia/{package}/lib"));
        }
        if let Some(dist_info) = dist_info {
            mkdirs(&site, dist_info);
        }
        site
    }

    /// A temporary folder, by its canonical path (the search resolves symlinks).
    fn temp_root() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        (tmp, root)
    }

    /// The two library folders of a fake site.
    fn libs(site: &Path) -> Vec<PathBuf> {
        vec![
            site.join("nvidia/cublas/lib"),
            site.join("nvidia/curand/lib"),
        ]
    }

    #[test]
    fn finds_the_wheels_of_the_environment_that_holds_the_binary_and_its_dist_info() {
        let (_tmp, root) = temp_root();
        let found = |exe: &Path, distribution: &str| wheel_library_dirs(Some(exe), distribution);
        // A venv (lib64 a symlink to lib, as `python -m venv` makes it). maturin's `bin` wheel
        // with bundled libraries: site-packages/ensemble.scripts/ensemble; without:
        // PREFIX/bin/ensemble.
        let site = fake_site(
            &root,
            "venv/lib/python3.11/site-packages",
            Some("ensemble-0.1.0.dist-info"),
        );
        std::os::unix::fs::symlink("lib", root.join("venv/lib64")).unwrap();
        let expected = WheelDirs {
            dirs: libs(&site),
            untrusted: vec![],
        };
        assert_eq!(
            found(&site.join("ensemble.scripts/ensemble"), "ensemble"),
            expected
        );
        assert_eq!(found(&root.join("venv/bin/ensemble"), "ensemble"), expected);
        // `pip install --user`: ~/.local/bin and ~/.local/lib/python3.X/site-packages; the name
        // compared as pip normalizes it (case, `-` and `_`), a local version label allowed.
        let user = fake_site(
            &root,
            "home/.local/lib/python3.12/site-packages",
            Some("Ensemble_Arena-0.1.0+cuda12.dist-info"),
        );
        assert_eq!(
            found(&root.join("home/.local/bin/ensemble"), "ensemble-arena").dirs,
            libs(&user)
        );
        // The CUDA wheel's distribution is found by its own name, not by the CPU wheel's.
        let cuda = fake_site(
            &root,
            "cuda/lib/python3.10/site-packages",
            Some("arena_ensemble_cuda12-0.1.0.dist-info"),
        );
        let cuda_exe = root.join("cuda/bin/ensemble");
        assert_eq!(found(&cuda_exe, "arena-ensemble-cuda12").dirs, libs(&cuda));
        assert_eq!(found(&cuda_exe, "arena-ensemble"), WheelDirs::default());
        // Debian's and Kaggle's system Python: /usr/local/bin, dist-packages.
        let system = fake_site(
            &root,
            "usr/local/lib/python3.11/dist-packages",
            Some("ensemble-0.1.0.dist-info"),
        );
        assert_eq!(
            found(&root.join("usr/local/bin/ensemble"), "ensemble").dirs,
            libs(&system)
        );
    }

    #[test]
    fn an_environment_without_the_dist_info_is_ignored() {
        let (_tmp, root) = temp_root();
        let nothing = WheelDirs::default();
        // Unzipped to ROOT/ensemble.scripts/ensemble: ROOT/nvidia is not a site-packages.
        assert_eq!(fake_site(&root, "", None), root);
        assert!(root.join("nvidia/cublas/lib").is_dir());
        let unzipped = root.join("ensemble.scripts/ensemble");
        assert_eq!(wheel_library_dirs(Some(&unzipped), "ensemble"), nothing);
        // A site-packages without this project's dist-info: none, another project's (a longer
        // name, the same name as a file), or it is not named site-packages.
        for (site, dist_info) in [
            ("a/lib/python3.11/site-packages", None),
            (
                "b/lib/python3.11/site-packages",
                Some("ensemble_extra-0.1.0.dist-info"),
            ),
            (
                "c/lib/python3.11/site-packages",
                Some("ensembles-0.1.0.dist-info"),
            ),
            (
                "d/lib/python3.11/packages",
                Some("ensemble-0.1.0.dist-info"),
            ),
        ] {
            let site = fake_site(&root, site, dist_info);
            std::fs::write(site.join("ensemble-0.1.0.dist-info.txt"), "").unwrap();
            let prefix = site.ancestors().nth(3).unwrap();
            for exe in [
                prefix.join("bin/ensemble"),
                site.join("ensemble.scripts/ensemble"),
            ] {
                assert_eq!(
                    wheel_library_dirs(Some(&exe), "ensemble"),
                    nothing,
                    "{exe:?}"
                );
            }
        }
        let file_only = fake_site(&root, "e/lib/python3.11/site-packages", None);
        std::fs::write(file_only.join("ensemble-0.1.0.dist-info"), "").unwrap();
        let exe = root.join("e/bin/ensemble");
        assert_eq!(wheel_library_dirs(Some(&exe), "ensemble"), nothing);
        // No binary path, an empty one, a relative one.
        assert_eq!(wheel_library_dirs(None, "ensemble"), nothing);
        for exe in ["", "ensemble", "venv/bin/ensemble"] {
            assert_eq!(
                wheel_library_dirs(Some(Path::new(exe)), "ensemble"),
                nothing
            );
        }
    }

    #[test]
    fn group_or_world_writable_folders_are_passed_over() {
        let (_tmp, root) = temp_root();
        let site = |name: &str| {
            fake_site(
                &root,
                &format!("{name}/lib/python3.11/site-packages"),
                Some("ensemble-0.1.0.dist-info"),
            )
        };
        let found =
            |name: &str| wheel_library_dirs(Some(&root.join(name).join("bin/x")), "ensemble");
        // The site-packages folder world-writable: nothing under it.
        let world = site("world");
        chmod(&world, 0o777);
        assert_eq!(
            found("world"),
            WheelDirs {
                dirs: vec![],
                untrusted: vec![world],
            }
        );
        // The nvidia folder writable by others (not by the group).
        let nvidia = site("nvidia");
        chmod(&nvidia.join("nvidia"), 0o757);
        assert_eq!(found("nvidia").untrusted, [nvidia.join("nvidia")]);
        // One library folder group-writable, one wheel's folder world-writable: the other
        // library folder is still searched.
        let group = site("group");
        chmod(&group.join("nvidia/cublas/lib"), 0o775);
        assert_eq!(
            found("group"),
            WheelDirs {
                dirs: vec![group.join("nvidia/curand/lib")],
                untrusted: vec![group.join("nvidia/cublas/lib")],
            }
        );
        let package = site("package");
        chmod(&package.join("nvidia/curand"), 0o777);
        assert_eq!(
            found("package"),
            WheelDirs {
                dirs: vec![package.join("nvidia/cublas/lib")],
                untrusted: vec![package.join("nvidia/curand/lib")],
            }
        );
    }

    /// Prints step 1 of the search for this test binary, when run by
    /// `the_active_environments_variables_are_not_read` (which sets NEURAL_TEST_PRINT_SEARCH on
    /// that child process only); does nothing otherwise.
    #[test]
    fn print_the_search_of_this_binary() {
        if std::env::var_os("NEURAL_TEST_PRINT_SEARCH").is_some() {
            println!("search: {:?}", wheel_library_dirs_of_this_binary());
        }
    }

    #[test]
    fn the_active_environments_variables_are_not_read() {
        let (_tmp, root) = temp_root();
        let name = project_name(PYPROJECT).unwrap();
        let dist_info = format!("{}-0.1.0.dist-info", normalized(&name));
        fake_site(&root, "venv/lib/python3.11/site-packages", Some(&dist_info));
        // This test binary, run again for the test above alone, with the variables set on the
        // child only: absolute, empty and relative (to its working directory) values.
        let venv = root.join("venv").into_os_string();
        for (virtual_env, conda_prefix) in [(venv.clone(), venv), ("venv".into(), "".into())] {
            let output = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "cuda_libraries::tests::print_the_search_of_this_binary",
                ])
                .args(["--nocapture", "--test-threads", "1"])
                .current_dir(&root)
                .env("NEURAL_TEST_PRINT_SEARCH", "1")
                .env("VIRTUAL_ENV", virtual_env)
                .env("CONDA_PREFIX", conda_prefix)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(
                output.status.success() && stdout.contains("search: WheelDirs"),
                "{stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(!stdout.contains("nvidia"), "{stdout}");
        }
    }

    #[test]
    fn the_distribution_is_the_pyprojects_name_compared_as_pip_compares_names() {
        assert!(project_name(PYPROJECT).is_some_and(|n| !n.is_empty()));
        let pyproject =
            "[tool.other]\nname = \"no\"\n[project]\nversion = \"1\"\nname = \"A.b-c\"\n";
        assert_eq!(project_name(pyproject).as_deref(), Some("A.b-c"));
        assert_eq!(project_name("[tool.maturin]\nname = \"x\"\n"), None);
        assert_eq!(
            normalized("Ensemble.Arena--CUDA12_x"),
            "ensemble_arena_cuda12_x"
        );
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
        let passed_over = tmp.path().join("writable");
        let wheels = WheelDirs {
            dirs: dirs.to_vec(),
            untrusted: vec![passed_over.clone()],
        };
        let message = not_found_message(&[&a, &b, &c], &wheels);
        assert!(
            message.starts_with(
                "libensemble-test-absent.so.12 (cuBLAS), libensemble-test-absent-lt.so.12 \
                 (cuBLAS), libensemble-test-absent-rand.so.10 (cuBLAS) not found (looked in: "
            ) && message.contains(&tmp.path().display().to_string())
                && message.contains(&format!(
                    "(passed over as group- or world-writable: {}), then the system's",
                    passed_over.display()
                ))
                && message.contains("`pip install nvidia-cublas-cu12 nvidia-curand-cu12`"),
            "{message}"
        );
        let message = not_found_message(&[&a], &WheelDirs::default());
        assert!(
            message.contains(
                "(looked in: no NVIDIA wheels in the Python environment of this binary, then"
            ),
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
        let (_tmp, root) = temp_root();
        let library = root.join("libensemble-test.so.12");
        std::fs::copy(zlib, &library).unwrap();
        chmod(&library, 0o644);
        let needed = Needed {
            soname: "libensemble-test.so.12".into(),
            what: "cuBLAS",
            package: "nvidia-cublas-cu12".into(),
        };
        open_library(&needed, std::slice::from_ref(&root)).unwrap();
        // A library file that others may write is refused, not loaded.
        let (_writable, writable) = temp_root();
        std::fs::copy(zlib, writable.join("libensemble-test.so.12")).unwrap();
        chmod(&writable.join("libensemble-test.so.12"), 0o664);
        match open_library(&needed, &[writable]) {
            Err(Failure::Broken(error)) => {
                assert!(
                    error.ends_with("is group- or world-writable: not loaded"),
                    "{error}"
                )
            }
            other => panic!("{other:?}"),
        }
        // A file that is not a library is named with the loader's reason.
        let (_other, other) = temp_root();
        std::fs::write(other.join("libensemble-test.so.12"), b"not ELF").unwrap();
        chmod(&other.join("libensemble-test.so.12"), 0o644);
        match open_library(&needed, &[other]) {
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
