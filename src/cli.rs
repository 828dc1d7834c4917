//! Command-line arguments (clap). Each subcommand's work lives in its own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::lab::LabCommand;

#[derive(Debug, Parser)]
#[command(
    name = "cmfleet",
    version = crate::model::version::LONG,
    about = "Migrate a fleet of chatmail relays from old machines to new ones",
    after_help = "Exit codes: 0 success, 1 usage or inventory error, 2 some relays failed, 3 the journal could not be saved (report from memory), 130 interrupted.\nDocumentation: docs/quickstart.md, docs/inventory.md, docs/runbook.md."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: GlobalArgs,
}

/// Options every subcommand accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Colours in reports: auto = on a terminal unless NO_COLOR is set.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto, env = "CMFLEET_COLOR")]
    pub color: ColorChoice,
    /// More log output on stderr (-v info, -vv debug, -vvv trace); CMFLEET_LOG=filter overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less log output on stderr (-q errors only, -qq nothing). Reports are still printed.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set to a non-empty value.
    Auto,
    /// Always, even into a pipe or with NO_COLOR.
    Always,
    /// Never.
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print each selected relay's six steps with the exact commands.
    Plan {
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text, env = "CMFLEET_FORMAT")]
        format: Format,
    },
    /// Migrate the selected relays; resumes each from where the journal says it stopped.
    Migrate(MigrateArgs),
    /// Show where every selected relay stands, from the journal.
    Status {
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text, env = "CMFLEET_FORMAT")]
        format: Format,
    },
    /// Check that the selected relays are ready to move (ssh, disk, config, DNS); changes nothing.
    Check {
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text, env = "CMFLEET_FORMAT")]
        format: Format,
    },
    /// After a migration: DNS serves NEW, NEW listens, OLD is silent, NEW holds OLD's mail.
    Verify {
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text, env = "CMFLEET_FORMAT")]
        format: Format,
    },
    /// Put DOWN relays back on their OLD machine (mail re-enabled there, DNS back).
    Rollback(RollbackArgs),
    /// DNS chores around a migration: lower the TTL days ahead, restore it afterwards.
    Dns {
        #[command(subcommand)]
        command: DnsCli,
    },
    /// Render the journal as one self-contained HTML page: a timeline of every relay's steps.
    Report(ReportArgs),
    /// Print a shell completion script (e.g. `cmfleet completions bash > /etc/bash_completion.d/cmfleet`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print cmfleet's man page (roff), e.g. `cmfleet man | man -l -`, or a subcommand's
    /// (`cmfleet man migrate`, `cmfleet man dns lower-ttl`).
    Man {
        /// The subcommand (and sub-subcommand) whose page to print; none for cmfleet's.
        command: Vec<String>,
    },
    /// A real fleet of relay hosts on this machine, for trying cmfleet (needs root).
    Lab {
        #[command(subcommand)]
        command: LabCli,
    },
}

#[derive(Debug, Subcommand)]
pub enum DnsCli {
    /// Record each relay's A/AAAA TTL in the journal and lower it; `migrate` then waits
    /// until the old TTL has elapsed before cutting a relay over.
    LowerTtl {
        #[command(flatten)]
        target: Target,
        /// The lowered TTL in seconds.
        #[arg(long, default_value_t = 300)]
        ttl: u32,
    },
    /// Put back the TTL recorded by lower-ttl (or the one given), on the site the relay is on now.
    RestoreTtl {
        #[command(flatten)]
        target: Target,
        /// The TTL to set instead of the recorded one.
        #[arg(long)]
        ttl: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LabCli {
    /// Start a lab, migrate it with live progress, print the report, stop the lab.
    Demo {
        /// Number of relays.
        #[arg(long, default_value_t = 4)]
        relays: usize,
        /// The lab directory.
        #[arg(long, default_value = crate::lab::DEFAULT_DIR)]
        dir: PathBuf,
        /// Keep the lab running afterwards (stop it with `cmfleet lab down`).
        #[arg(long)]
        keep: bool,
        /// Real chatmail relays (Debian 12 containers deployed by chatmail's own
        /// cmdeploy) instead of the loopback lab's hosts: see `lab up --real-chatmail`.
        #[arg(long)]
        real_chatmail: bool,
        /// Progress display.
        #[arg(long, value_enum, default_value_t = Progress::Auto, env = "CMFLEET_PROGRESS")]
        progress: Progress,
    },
    #[command(flatten)]
    Other(LabCommand),
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub target: Target,
    /// Start at this step (1-6); earlier steps must be done for step 3 to run.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=6))]
    pub from_step: Option<u8>,
    /// Stop after this step (1-6); `--until-step 2` pre-stages with no downtime.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=6), default_value_t = 6)]
    pub until_step: u8,
    /// Forget the journal of the selected relays and start them from step 1.
    #[arg(long)]
    pub restart: bool,
    /// Do not ask before the first cutover (downtime) of this run.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Cut over even if a TTL lowered with `dns lower-ttl` has not elapsed yet.
    #[arg(long)]
    pub force: bool,
    /// Run step 1 again for relays not cut over yet (a last delta just before the
    /// cutover, so the final sync inside the downtime moves little).
    #[arg(long)]
    pub refresh: bool,
    /// Print what would run, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = Progress::Auto, env = "CMFLEET_PROGRESS")]
    pub progress: Progress,
    /// Also write the final report as JSON to this file (schema: docs/report-schema.md).
    #[arg(long, env = "CMFLEET_REPORT")]
    pub report: Option<PathBuf>,
}

/// `report`: the journal as a timeline page.
#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub target: Target,
    /// Write the HTML timeline to this file (self-contained: CSS, JS and SVG inline).
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
}

/// `rollback`: never fleet-wide by accident, so `--limit` is required.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The inventory file.
    #[arg(short, long, env = "CMFLEET_INVENTORY")]
    pub inventory: PathBuf,
    /// Relays to roll back: mail domains, globs, group names, @FILE, !EXCLUDE (comma-separated).
    #[arg(short, long)]
    pub limit: String,
    /// Also roll back relays whose NEW site is active (mail it received since stays there).
    #[arg(long)]
    pub force: bool,
    /// Allow a selection that holds every relay of the fleet (refused without it).
    #[arg(long)]
    pub all: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "CMFLEET_FORMAT")]
    pub format: Format,
}

/// Which inventory and which of its relays.
#[derive(Debug, Args)]
pub struct Target {
    /// The inventory file.
    #[arg(short, long, env = "CMFLEET_INVENTORY")]
    pub inventory: PathBuf,
    /// Relays to work on: mail domains, globs, group names, @FILE, !EXCLUDE (comma-separated).
    #[arg(short, long, env = "CMFLEET_LIMIT")]
    pub limit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: aligned columns.
    Text,
    /// For scripts (schemas in docs/report-schema.md).
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    /// Live bars on a terminal, plain lines otherwise.
    Auto,
    /// Redrawn bars, one per relay in flight, and fleet totals.
    Live,
    /// One timestamped line per event (logs, CI).
    Plain,
    /// One JSON object per event (docs/report-schema.md).
    Json,
}
