//! `ensemble importance`: a run's feature importance table in the terminal.
use crate::cli::ImportanceArgs;
use crate::report::Importance;
use anyhow::{Context, Result};

pub fn run(args: ImportanceArgs) -> Result<()> {
    let only = args
        .features
        .as_deref()
        .map(glob::Pattern::new)
        .transpose()
        .context("--features: not a glob pattern")?;
    let importance = Importance::read(&args.run, args.by_fold)?;
    print!(
        "{}",
        importance.table(args.top, only.as_ref(), args.by_fold)
    );
    Ok(())
}
