//! `amisim chaos run FILE.toml --seed N` (or `--seeds A..B`): runs an experiment (crate
//! `amisim-lab`) on a cluster of its own and prints the verdict and the report.
//!
//! stdout: the seed and every resolved parameter first (`amisim chaos run: ...` lines), then the
//! text report (one seed) or one line per seed and the failing seeds (`--seeds`). With `--out
//! DIR`: `report.txt`, `report.json`, `report.html` and `history.json` (Jepsen form) in DIR
//! (`DIR/seed-N/` for several seeds). Exit code 1 if any invariant fails in any seed.

use std::path::PathBuf;
use std::sync::Arc;

use amisim_lab::run::{run_experiment, run_seeds, Progress, RunOptions};
use amisim_lab::spec::{parse_seed_range, Experiment};
use amisim_lab::ClusterMode;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Run an experiment: a workload and a fault timeline on a cluster of its own, then heal,
/// quiescence, invariant checks and a report.
///
/// The experiment file is TOML (see experiments/README.md). With the virtual clock (the
/// default) a seed reproduces the run exactly: the same schedule and the same event logs.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The experiment file.
    #[arg(value_name = "FILE.toml")]
    pub file: PathBuf,

    /// The seed of the run (default: the file's `seed`, else 1).
    #[arg(long, value_name = "N", conflicts_with = "seeds")]
    pub seed: Option<u64>,

    /// Run every seed of a range (A..B excludes B, A..=B includes it) and list the failing
    /// ones.
    #[arg(long, value_name = "A..B")]
    pub seeds: Option<String>,

    /// Write report.txt, report.json, report.html and history.json here (DIR/seed-N/ for
    /// several seeds).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Keep the nodes' data under DIR/seed-N (must not exist yet) instead of a temporary
    /// directory removed afterwards.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,

    /// Run the nodes in this process, or as child processes of this binary.
    #[arg(long, value_enum, default_value_t = Mode::InProcess)]
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    InProcess,
    Processes,
}

/// The progress bar on stderr (hidden when stderr is not a terminal).
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(label: String) -> Bar {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix} {msg:<12} [{bar:30}] {pos}/{len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label);
        Bar { bar }
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, len: u64) {
        self.bar.set_message(name.to_string());
        self.bar.set_length(len);
        self.bar.set_position(0);
    }
    fn inc(&self, n: u64) {
        if self.bar.length() == Some(0) || self.bar.position() >= self.bar.length().unwrap_or(0) {
            self.bar.inc_length(n);
        }
        self.bar.inc(n);
    }
    fn note(&self, line: &str) {
        self.bar
            .set_message(line.chars().take(40).collect::<String>());
    }
    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let exp = Experiment::load(&args.file)?;
    let seeds = match &args.seeds {
        Some(range) => parse_seed_range(range)?,
        None => vec![args.seed.unwrap_or(exp.default_seed)],
    };
    let mode = match args.mode {
        Mode::InProcess => ClusterMode::InProcess,
        Mode::Processes => ClusterMode::Processes {
            binary: std::env::current_exe().context("cannot find the amisim binary")?,
        },
    };
    if seeds.len() == 1 {
        println!("amisim chaos run: seed {}", seeds[0]);
    } else {
        println!(
            "amisim chaos run: seeds {}..={} ({} runs)",
            seeds[0],
            seeds[seeds.len() - 1],
            seeds.len()
        );
    }
    println!(
        "amisim chaos run: mode {}",
        match args.mode {
            Mode::InProcess => "in-process",
            Mode::Processes => "processes",
        }
    );
    for line in exp.describe() {
        println!("amisim chaos run: {line}");
    }

    if let [seed] = seeds[..] {
        let opts = RunOptions {
            data: args.data.clone(),
            mode,
            progress: Arc::new(Bar::new(format!("seed {seed}"))),
        };
        let outcome = run_experiment(&exp, seed, &opts).await?;
        print!("{}", amisim_lab::report::text::render(&outcome.report));
        if let Some(dir) = &args.out {
            for p in outcome.write(dir)? {
                println!("amisim chaos run: wrote {}", p.display());
            }
        }
        anyhow::ensure!(
            outcome.pass(),
            "seed {seed}: invariants violated: {}",
            outcome
                .report
                .verdicts
                .iter()
                .filter(|v| !v.pass)
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(());
    }

    let opts = RunOptions {
        data: args.data.clone(),
        mode,
        progress: Arc::new(Bar::new("seeds".into())),
    };
    let mut write_error = None;
    let results = run_seeds(&exp, &seeds, &opts, |r, outcome| {
        let status = if r.pass { "pass" } else { "FAIL" };
        match r.failures.first() {
            None => println!("seed {:>6}: {status}", r.seed),
            Some(f) => println!("seed {:>6}: {status}: {f}", r.seed),
        }
        if let (Some(dir), Some(o)) = (&args.out, outcome) {
            if let Err(e) = o.write(&dir.join(format!("seed-{}", r.seed))) {
                write_error.get_or_insert(e);
            }
        }
    })
    .await;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    let failing: Vec<String> = results
        .iter()
        .filter(|r| !r.pass)
        .map(|r| r.seed.to_string())
        .collect();
    if failing.is_empty() {
        println!("amisim chaos run: all {} seeds passed", results.len());
        Ok(())
    } else {
        println!("amisim chaos run: failing seeds: {}", failing.join(" "));
        anyhow::bail!(
            "{} of {} seeds failed: {}",
            failing.len(),
            results.len(),
            failing.join(" ")
        )
    }
}
