//! One module per subcommand.
mod blend;
mod compare;
mod cv;
mod importance;
mod predict;
#[cfg(feature = "transformer")]
mod transformer;
mod tune;

use crate::cli::{Cli, Command};
use anyhow::Result;

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Cv(args) => cv::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Importance(args) => importance::run(args),
        Command::Compare(args) => compare::run(args),
        Command::Tune(args) => tune::run(args),
        Command::Blend(args) => blend::run(args),
        #[cfg(feature = "transformer")]
        Command::Transformer(args) => transformer::run(args),
        Command::Example(args) => {
            crate::example::write(&args.out, args.rows, args.test_rows, args.seed)?;
            println!("wrote {0}/train.csv and {0}/test.csv", args.out.display());
            Ok(())
        }
    }
}
