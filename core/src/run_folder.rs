//! The whole-folder run swap: a run writes into a staging folder and replaces its `--out`
//! folder at once.
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// Reports that mark a folder as a run this tool wrote (`cv`, `tune`, `predict`), which a new
/// run may therefore replace.
const RUN_REPORTS: [&str; 3] = ["metrics.json", "tune.json", "predict.json"];

/// A run folder being written. Every file goes into a staging folder beside the target (the
/// same parent, so that renames are atomic); `commit` swaps it in for the target as a whole.
/// A run that fails, or a crash, leaves the earlier folder as it was, and a finished run
/// leaves no file of an earlier one. Dropped without `commit`, the staging folder is removed.
pub struct RunFolder {
    target: PathBuf,
    /// The target as an absolute path, for what a run records about its own files.
    absolute: PathBuf,
    staging: PathBuf,
}

impl RunFolder {
    /// Checks that `target` (given as `--out`) may be replaced, and creates the staging
    /// folder. Refused: the current directory or a folder above it, a folder that holds one
    /// of `inputs` (each with the flag or key that names it, if given), and a folder of files that no
    /// run wrote.
    pub fn begin(target: &Path, inputs: &[(&str, Option<&Path>)]) -> Result<RunFolder> {
        let shown = target.display();
        let replaced_whole = "a run folder is replaced as a whole";
        // An existing folder is replaced where it really is (a symbolic link keeps pointing
        // to it); `.` or `..` only by their real names.
        let target = match std::fs::canonicalize(target) {
            Ok(folder) => {
                let here = std::env::current_dir()
                    .and_then(std::fs::canonicalize)
                    .map_err(Error::failed("cannot resolve the current directory"))?;
                if here.starts_with(&folder) {
                    return Err(Error::Invalid(format!(
                        "--out {shown} is the current directory or a folder above it: \
                         {replaced_whole}; name a folder of its own, e.g. runs/NAME"
                    )));
                }
                for (flag, input) in inputs {
                    let Some(input) = input else { continue };
                    if std::fs::canonicalize(input).is_ok_and(|i| i.starts_with(&folder)) {
                        return Err(Error::Invalid(format!(
                            "--out {shown} holds {flag} {}: {replaced_whole}, so it cannot \
                             hold the run's inputs; move them or choose another folder",
                            input.display()
                        )));
                    }
                }
                if !folder.is_dir() {
                    return Err(Error::Invalid(format!(
                        "--out {shown} is a file, not a folder"
                    )));
                }
                let mut entries = std::fs::read_dir(&folder)
                    .map_err(Error::failed(format!("cannot read --out {shown}")))?;
                let empty = entries.next().is_none();
                if !empty && !RUN_REPORTS.iter().any(|r| folder.join(r).is_file()) {
                    return Err(Error::Invalid(format!(
                        "--out {shown} holds files that no run wrote (no {}): {replaced_whole}; \
                         choose a new or empty folder",
                        RUN_REPORTS.join(", ")
                    )));
                }
                folder
            }
            Err(_) => target.to_owned(),
        };
        let Some(name) = target
            .file_name()
            .filter(|_| !target.ends_with(".."))
            .map(|n| n.to_string_lossy().into_owned())
        else {
            return Err(Error::Invalid(format!(
                "--out {shown}: {replaced_whole}; name a folder of its own, e.g. runs/NAME"
            )));
        };
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(parent)
            .map_err(Error::failed(format!("cannot create {}", parent.display())))?;
        let absolute = std::fs::canonicalize(parent)
            .map_err(Error::failed(format!(
                "cannot resolve {}",
                parent.display()
            )))?
            .join(&name);
        let staging = parent.join(format!(".{name}.{}.partial", std::process::id()));
        // Left by a crashed process that had this id.
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir(&staging).map_err(Error::failed(format!(
            "cannot create {}",
            staging.display()
        )))?;
        Ok(RunFolder {
            target,
            absolute,
            staging,
        })
    }

    /// The staging folder, where the run writes its files.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// Where `path` will be once the run is committed, absolute: a file of the staging folder
    /// moves into the target; any other path is resolved as it is.
    pub fn recorded_path(&self, path: &Path) -> PathBuf {
        match path.strip_prefix(&self.staging) {
            Ok(rest) => self.absolute.join(rest),
            Err(_) => std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned()),
        }
    }

    /// Swaps the staging folder in: the earlier run (if any) is renamed aside, the new one
    /// renamed into place, and the earlier one removed.
    pub fn commit(self) -> Result<()> {
        let aside = self.staging.with_extension("old");
        let earlier = std::fs::symlink_metadata(&self.target).is_ok();
        if earlier {
            std::fs::rename(&self.target, &aside).map_err(Error::failed(format!(
                "cannot move the earlier {} aside",
                self.target.display()
            )))?;
        }
        if let Err(error) = std::fs::rename(&self.staging, &self.target) {
            if earlier {
                let _ = std::fs::rename(&aside, &self.target);
            }
            return Err(Error::Failed {
                doing: format!("cannot create {}", self.target.display()),
                cause: error,
            });
        }
        if earlier {
            std::fs::remove_dir_all(&aside).map_err(Error::failed(format!(
                "wrote {}, but cannot remove the earlier run, moved to {}",
                self.target.display(),
                aside.display()
            )))?;
        }
        Ok(())
    }
}

impl Drop for RunFolder {
    fn drop(&mut self) {
        // Nothing is left once committed; otherwise the unfinished run goes.
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}
