//! `ensemble importance`: a run's feature importance table in the terminal.
use crate::cli::ImportanceArgs;
use crate::report::Importance;
use anyhow::Result;

pub fn run(args: ImportanceArgs) -> Result<()> {
    let importance = Importance::read_csv(&args.run.join("importance.csv"))?;
    print!("{}", importance.table(args.top));
    Ok(())
}
