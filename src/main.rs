//! cmfleet's entry point: parse arguments, run the command, map the outcome to an exit code.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;

use cmfleet::cli::{Cli, Command, Format};
use cmfleet::inventory::{self, Inventory};
use cmfleet::{exit, plan};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit::USAGE as u8)
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Plan { target, format } => {
            let inv = Inventory::load(&target.inventory)?;
            let relays = inventory::select(&inv, target.limit.as_deref())?;
            let plan = plan::plan(&inv.fleet, &relays);
            match format {
                Format::Text => print!("{}", plan::render_text(&plan)),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&plan)
                        .context("cannot render the plan as JSON")?
                ),
            }
            Ok(exit::OK)
        }
    }
}
