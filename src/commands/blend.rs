//! `ensemble blend`: members' predictions in, one submission and a report out.
use crate::cli::{BlendArgs, BlendMethod, BlendSpace};
use crate::data;
use anyhow::{bail, Context, Result};
use ensembles::blend::MemberSource;
use ensembles::blend::{self, BlendRequest, FoldsChoice, Method, Space, WeightChoice};
use std::path::{Path, PathBuf};

pub fn run(args: BlendArgs) -> Result<()> {
    if let Some(saved) = &args.apply {
        refuse_overwriting_inputs(&args.members, &args.out, Some(saved))?;
        let rows = blend::apply(saved, &args.members, &args.out)?;
        println!(
            "applied the blend in {} to {} member(s): wrote {} ({rows} rows)",
            saved.display(),
            args.members.len(),
            args.out.display()
        );
        return Ok(());
    }
    refuse_overwriting_inputs(&args.members, &args.out, None)?;
    let method = method(&args)?;
    let train = data::read_train(&training_file(&args)?)?;
    let request = BlendRequest {
        members: args.members,
        method,
        train_ids: train.battles.ids,
        labels: train.labels,
        folds: FoldsChoice {
            file: args.folds_file,
            n_folds: args.folds,
            seed: args.seed,
        },
        out: args.out,
    };
    let report = blend::run(&request)?;
    println!("{report}");
    Ok(())
}

/// Refuses an output that is one of the inputs: run inside a member's folder, the default
/// `--out submission.csv` would replace that member's own submission. With `--apply`, only
/// the submission is written, and it must not replace the saved blend either.
fn refuse_overwriting_inputs(
    members: &[MemberSource],
    out: &Path,
    saved_blend: Option<&Path>,
) -> Result<()> {
    let outputs = match saved_blend {
        None => vec![resolved(out), resolved(&out.with_file_name("blend.json"))],
        Some(saved) => {
            if resolved(out) == resolved(saved) {
                bail!("--out {} is the --apply file itself", out.display());
            }
            vec![resolved(out)]
        }
    };
    for member in members {
        let inputs = [
            Some(&member.oof),
            Some(&member.submission),
            member.folds.as_ref(),
        ];
        for input in inputs.into_iter().flatten() {
            if outputs.contains(&resolved(input)) {
                bail!(
                    "--out {} would overwrite member {}'s {}: write the blend elsewhere",
                    out.display(),
                    member.name,
                    input.display()
                );
            }
        }
    }
    Ok(())
}

/// `path` with its folder resolved (the file itself may not exist yet).
fn resolved(path: &Path) -> PathBuf {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let folder = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
    folder.join(path.file_name().unwrap_or_default())
}

/// `--train`, or the training file a member's run recorded in its metrics.json.
fn training_file(args: &BlendArgs) -> Result<PathBuf> {
    if let Some(path) = &args.train {
        return Ok(path.clone());
    }
    for member in &args.members {
        let Some(run) = member.oof.parent() else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(run.join("metrics.json")) else {
            continue;
        };
        let recorded: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: invalid JSON", run.join("metrics.json").display()))?;
        if let Some(train) = recorded["train"].as_str() {
            eprintln!(
                "training labels from {train} (recorded in {})",
                run.join("metrics.json").display()
            );
            return Ok(PathBuf::from(train));
        }
    }
    bail!("--train is needed: no member's run folder records its training file in metrics.json")
}

/// The blend method the flags ask for; flags that only apply to weighted blends are refused
/// with `--method stack` rather than silently ignored.
fn method(args: &BlendArgs) -> Result<Method> {
    let weights = match args.weights.as_deref().map(str::trim) {
        None | Some("auto") => WeightChoice::Auto,
        Some(list) => WeightChoice::Fixed(
            list.split(',')
                .map(|w| {
                    w.trim()
                        .parse::<f64>()
                        .with_context(|| format!("--weights: {w:?} is not a number"))
                })
                .collect::<Result<_>>()?,
        ),
    };
    match args.method {
        BlendMethod::Stack => {
            if matches!(weights, WeightChoice::Fixed(_)) || args.space.is_some() || args.calibrate {
                bail!(
                    "--weights W1,W2,.., --space and --calibrate apply to --method weighted only"
                );
            }
            Ok(Method::Stack)
        }
        BlendMethod::Weighted => Ok(Method::Weighted {
            space: match args.space.unwrap_or(BlendSpace::Probability) {
                BlendSpace::Probability => Space::Probability,
                BlendSpace::Logit => Space::Logit,
            },
            weights,
            calibrate: args.calibrate,
        }),
    }
}
