//! Command-line arguments (clap). Each subcommand's work lives in its own module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cmfleet",
    version,
    about = "Migrate a fleet of chatmail relays from old machines to new ones",
    after_help = "Exit codes: 0 success, 1 usage or inventory error, 2 some relays failed, 130 interrupted."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print each selected relay's six steps with the exact commands.
    Plan {
        #[command(flatten)]
        target: Target,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Which inventory and which of its relays.
#[derive(Debug, Args)]
pub struct Target {
    /// The inventory file.
    #[arg(short, long, env = "CMFLEET_INVENTORY")]
    pub inventory: PathBuf,
    /// Relays to work on: mail domains, globs, group names, @FILE, !EXCLUDE (comma-separated).
    #[arg(short, long)]
    pub limit: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}
