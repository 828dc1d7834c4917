//! cmfleet's entry point: parse arguments, run the command, map the outcome to an exit code.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

use cmfleet::cli::{
    Cli, ColorChoice, Command, DnsCli, Format, GlobalArgs, LabCli, MigrateArgs, Progress,
    ReportArgs,
};
use cmfleet::lab;
use cmfleet::model::exit;
use cmfleet::model::inventory::{self, Inventory};
use cmfleet::model::step::Step;
use cmfleet::pipeline::journal::{now_ms, Journal};
use cmfleet::pipeline::migrate::MigrateOptions;
use cmfleet::pipeline::plan;
use cmfleet::pipeline::report::{self, ProgressMode, ReportContext, Reporter};
use cmfleet::pipeline::ttl::TtlOutcome;

fn main() -> ExitCode {
    // clap's own exit code for usage errors is 2, which cmfleet reserves for
    // "some relays failed": usage errors exit 1 here.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE as u8
            } else {
                exit::OK as u8
            });
        }
    };
    init_logging(&cli.global);
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!(
                "error: {}",
                cmfleet::infra::redact::clean(&format!("{e:#}"))
            );
            ExitCode::from(exit::USAGE as u8)
        }
    }
}

/// Logs (tracing) go to stderr: warnings by default, `-v`/`-q` move the level,
/// `CMFLEET_LOG` (an env-filter such as `cmfleet=debug`) overrides both.
fn init_logging(g: &GlobalArgs) {
    let level = match (g.verbose, g.quiet) {
        (0, 0) => "warn",
        (1, _) => "info",
        (2, _) => "debug",
        (v, _) if v >= 3 => "trace",
        (_, 1) => "error",
        _ => "off",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CMFLEET_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = color_override(g.color).unwrap_or_else(|| {
        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// `--color always|never` forces colours; `auto` leaves it to the terminal and NO_COLOR.
fn color_override(c: ColorChoice) -> Option<bool> {
    match c {
        ColorChoice::Auto => None,
        ColorChoice::Always => Some(true),
        ColorChoice::Never => Some(false),
    }
}

fn run(cli: Cli) -> Result<i32> {
    let color = color_override(cli.global.color);
    match cli.command {
        Command::Plan { target, format } => {
            let inv = Inventory::load(&target.inventory)?;
            cmfleet::host::identity::refuse_same_machines(&inv)?;
            let Some(relays) = selected(&inv, target.limit.as_deref())? else {
                return Ok(exit::OK);
            };
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
        Command::Migrate(args) => {
            let inv = Inventory::load(&args.target.inventory)?;
            run_migrate(&inv, &args, color)
        }
        Command::Status { target, format } => {
            let inv = Inventory::load(&target.inventory)?;
            let Some(relays) = selected(&inv, target.limit.as_deref())? else {
                return Ok(exit::OK);
            };
            let names: Vec<&str> = relays.iter().map(|r| r.name.as_str()).collect();
            let journal = Journal::peek(&inv.fleet.state_dir, &inv.path)?;
            match format {
                Format::Text => print!("{}", report::status_table(&journal, &names)),
                Format::Json => println!("{}", report::status_json(&journal, &names)?),
            }
            Ok(report::status_exit_code(&journal, &names))
        }
        Command::Check { target, format } => {
            let inv = Inventory::load(&target.inventory)?;
            let Some(relays) = selected(&inv, target.limit.as_deref())? else {
                return Ok(exit::OK);
            };
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let results = rt.block_on(cmfleet::commands::check::check(&inv, &relays))?;
            print_findings("check", &results, format)
        }
        Command::Verify { target, format } => {
            let inv = Inventory::load(&target.inventory)?;
            let Some(relays) = selected(&inv, target.limit.as_deref())? else {
                return Ok(exit::OK);
            };
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let results = rt.block_on(cmfleet::commands::verify::verify(&inv, &relays))?;
            print_findings("verify", &results, format)
        }
        Command::Rollback(args) => {
            let inv = Inventory::load(&args.inventory)?;
            let relays = rollback_selection(&inv, &args.limit, args.all)?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let rows = rt.block_on(cmfleet::commands::rollback::rollback(
                &inv, &relays, args.force,
            ))?;
            match args.format {
                Format::Text => print!("{}", cmfleet::commands::rollback::render_text(&rows)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
            }
            Ok(cmfleet::commands::rollback::exit_code(&rows))
        }
        Command::Dns { command } => run_dns(command),
        Command::Report(args) => run_report(&args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "cmfleet", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Command::Man { command } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            // Built, so subcommands carry the global options and their full name.
            cmd.build();
            let mut title = "cmfleet".to_string();
            for name in &command {
                cmd = cmd
                    .find_subcommand(name)
                    .cloned()
                    .with_context(|| format!("no subcommand {title} {name}"))?;
                title = format!("{title}-{name}");
            }
            let man = clap_mangen::Man::new(cmd).title(title);
            match man.render(&mut std::io::stdout()) {
                // `cmfleet man | head` is not an error.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(anyhow::Error::new(e).context("cannot write the man page"))
                }
                _ => Ok(exit::OK),
            }
        }
        Command::Lab { command } => match command {
            LabCli::Other(cmd) => {
                lab::run(cmd)?;
                Ok(exit::OK)
            }
            LabCli::Demo {
                relays,
                dir,
                keep,
                real_chatmail,
                progress,
            } => lab_demo(relays, &dir, keep, real_chatmail, progress, color),
        },
    }
}

/// The relays `--limit` selects, or `None` (said on stderr, so JSON output stays
/// JSON) when it selects none: an empty `failed.txt` after a clean night is nothing
/// to do, not the whole fleet.
fn selected<'a>(
    inv: &'a Inventory,
    limit: Option<&str>,
) -> Result<Option<Vec<&'a inventory::Relay>>> {
    let relays = inventory::select(inv, limit)?;
    if relays.is_empty() {
        eprintln!("nothing to do: --limit selects no relay");
        return Ok(None);
    }
    Ok(Some(relays))
}

/// `rollback` acts only on relays the operator named: an empty selection is an
/// error (not "nothing to do": the operator meant some relay), and the whole of a
/// fleet of several relays needs `--all` too (a glob or an exclusion that happens
/// to cover every relay could undo a migrated fleet).
fn rollback_selection<'a>(
    inv: &'a Inventory,
    limit: &str,
    all: bool,
) -> Result<Vec<&'a inventory::Relay>> {
    let relays = inventory::select(inv, Some(limit))?;
    if relays.is_empty() {
        bail!("rollback: --limit {limit:?} selects no relay; name the relays to roll back (nothing was changed)");
    }
    if relays.len() == inv.relays.len() && inv.relays.len() > 1 && !all {
        bail!(
            "rollback: --limit {limit:?} selects every relay of the fleet ({}); pass --all as well to roll back the whole fleet (nothing was changed)",
            relays.len()
        );
    }
    Ok(relays)
}

fn progress_mode(p: Progress) -> ProgressMode {
    match p {
        Progress::Auto => ProgressMode::Auto,
        Progress::Live => ProgressMode::Live,
        Progress::Plain => ProgressMode::Plain,
        Progress::Json => ProgressMode::Json,
    }
}

fn run_migrate(inv: &Inventory, args: &MigrateArgs, color: Option<bool>) -> Result<i32> {
    let Some(relays) = selected(inv, args.target.limit.as_deref())? else {
        return Ok(exit::OK);
    };
    let opts = MigrateOptions {
        from_step: args.from_step.and_then(Step::from_number),
        until_step: Step::from_number(args.until_step).unwrap_or(Step::Activate),
        restart: args.restart,
        dry_run: args.dry_run,
        force: args.force,
        refresh: args.refresh,
    };
    if args.dry_run {
        let plan = plan::plan(&inv.fleet, &relays);
        print!("{}", plan::render_text(&plan));
        println!("dry run: nothing was changed");
        return Ok(exit::OK);
    }
    if opts.until_step >= Step::DisableOld && !args.yes {
        confirm_cutover(relays.len(), args.restart)?;
    }
    let ctx = ReportContext {
        inventory: args.target.inventory.clone(),
        relays: relays.iter().map(|r| r.name.clone()).collect(),
        state_dir: inv.fleet.state_dir.clone(),
        until_step: opts.until_step,
    };
    let mut reporter = Reporter::new(progress_mode(args.progress), ctx);
    if let Some(on) = color {
        reporter = reporter.with_color(on);
    }
    tracing::info!(
        relays = relays.len(),
        state_dir = %inv.fleet.state_dir.display(),
        "migrate"
    );
    if let Ok(mut before) = Journal::peek(&inv.fleet.state_dir, &inv.path) {
        if opts.restart {
            // The run forgets these relays' records: nothing of them is done or DOWN
            // since an earlier run any more, for the views as for the summary.
            before
                .relays
                .retain(|name, _| !relays.iter().any(|r| &r.name == name));
        }
        reporter.preload(&before);
    }
    let result = cmfleet::pipeline::run::run(inv, &relays, &opts, reporter)?;
    let finished = &result.finished;
    for e in &finished.errors {
        eprintln!("warning: {e}");
    }
    if let Some(path) = &args.report {
        report::write_json_report(path, &finished.summary)?;
    }
    if let Some(e) = &result.outcome.journal_error {
        eprintln!("error: {e}");
    }
    Ok(result.exit_code())
}

/// `report --html`: the journal as a timeline page.
fn run_report(args: &ReportArgs) -> Result<i32> {
    let inv = Inventory::load(&args.target.inventory)?;
    let Some(relays) = selected(&inv, args.target.limit.as_deref())? else {
        return Ok(exit::OK);
    };
    let names: Vec<&str> = relays.iter().map(|r| r.name.as_str()).collect();
    let journal = Journal::peek(&inv.fleet.state_dir, &inv.path)?;
    tracing::info!(journal = %cmfleet::pipeline::journal::journal_path(&inv.fleet.state_dir, &inv.path).display(), "read");
    let html = report::html::render(&journal, &names, now_ms());
    report::write_atomic(&args.html, html.as_bytes())
        .with_context(|| format!("cannot write {}", args.html.display()))?;
    println!(
        "wrote {} ({} relays); open it in a browser",
        args.html.display(),
        names.len()
    );
    Ok(exit::OK)
}

/// `dns lower-ttl` / `dns restore-ttl`: one line per relay, the journal updated.
fn run_dns(command: DnsCli) -> Result<i32> {
    let (target, lower, ttl) = match command {
        DnsCli::LowerTtl { target, ttl } => (target, true, Some(ttl)),
        DnsCli::RestoreTtl { target, ttl } => (target, false, ttl),
    };
    let inv = Inventory::load(&target.inventory)?;
    let Some(relays) = selected(&inv, target.limit.as_deref())? else {
        return Ok(exit::OK);
    };
    let mut journal = Journal::open(&inv.fleet.state_dir, &inv.path)?;
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let mut failed = 0;
    for relay in relays {
        let outcome = rt.block_on(async {
            match (lower, ttl) {
                (true, Some(t)) => cmfleet::pipeline::ttl::lower(relay, t, &mut journal).await,
                _ => cmfleet::pipeline::ttl::restore(relay, ttl, &mut journal).await,
            }
        });
        journal.save()?;
        let line = match &outcome {
            TtlOutcome::Changed { from, to } => format!("TTL {from}s -> {to}s"),
            TtlOutcome::Unchanged { ttl } => format!("TTL already {ttl}s"),
            TtlOutcome::Manual { set } => format!("set by hand: {}", set.join("; ")),
            TtlOutcome::Skipped { reason } => format!("skipped: {reason}"),
            TtlOutcome::Failed { error } => {
                failed += 1;
                format!("FAILED: {error}")
            }
        };
        println!("{}: {line}", relay.name);
    }
    if lower {
        println!("next: wait for the old TTL to elapse (migrate enforces it), then cmfleet migrate -i {}", target.inventory.display());
    }
    Ok(if failed > 0 {
        exit::RELAYS_FAILED
    } else {
        exit::OK
    })
}

/// `check` and `verify`: the table or JSON; exit 2 when a relay failed a check.
fn print_findings(
    what: &str,
    results: &[cmfleet::host::inspect::RelayFindings],
    format: Format,
) -> Result<i32> {
    match format {
        Format::Text => print!("{}", cmfleet::host::inspect::render_text(what, results)),
        Format::Json => println!("{}", cmfleet::host::inspect::render_json(results)?),
    }
    Ok(cmfleet::host::inspect::exit_code(results))
}

/// The first cutover of a run takes relays down: ask, unless `--yes`.
fn confirm_cutover(relays: usize, restart: bool) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("this run may take up to {relays} relay(s) down (steps 3-6) and no terminal is attached to confirm (hint: pass --yes, or --until-step 2 to pre-stage only)");
    }
    let restart = if restart {
        " and forgets their journal (--restart)"
    } else {
        ""
    };
    eprint!(
        "This run may take up to {relays} relay(s) down (steps 3-6){restart}. Continue? [y/N] "
    );
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if !matches!(answer.trim(), "y" | "Y" | "yes") {
        bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

/// `lab demo`: a whole migration on a lab, in one command.
fn lab_demo(
    relays: usize,
    dir: &Path,
    keep: bool,
    real_chatmail: bool,
    progress: Progress,
    color: Option<bool>,
) -> Result<i32> {
    let data = lab::DataOptions::default();
    let subnet = "127.77.0"
        .parse::<lab::Subnet>()
        .map_err(|e| anyhow::anyhow!("bad lab subnet: {e}"))?;
    lab::run(lab::LabCommand::Up {
        relays,
        dir: dir.to_path_buf(),
        subnet,
        users: data.users,
        messages: data.messages,
        message_size: data.message_size,
        seed: data.seed,
        cmdeploy_cost: lab::CostModel::Fast,
        cmdeploy_scale: 0.0,
        real_chatmail,
        real_net: 1,
        chatmail: lab::real::chatmail::ChatmailRelayArgs {
            chatmail_relay: None,
            chatmail_ref: lab::real::chatmail::DEFAULT_REF.to_string(),
        },
    })?;
    let inventory = dir.join("inventory.toml");
    let result = Inventory::load(&inventory)
        .map_err(anyhow::Error::from)
        .and_then(|inv| {
            let args = MigrateArgs {
                target: cmfleet::cli::Target {
                    inventory: inventory.clone(),
                    limit: None,
                },
                from_step: None,
                until_step: 6,
                restart: false,
                yes: true,
                force: false,
                refresh: false,
                dry_run: false,
                progress,
                report: None,
            };
            run_migrate(&inv, &args, color)
        });
    // Name the program as it was invoked: after ./lab-demo.sh, `cmfleet` is not on PATH.
    let me = std::env::args().next().unwrap_or_else(|| "cmfleet".into());
    let inv = inventory.display();
    if keep {
        println!("the lab keeps running; try:");
        println!("  {me} status -i {inv}");
        println!("  {me} verify -i {inv}");
        println!("  {me} report -i {inv} --html timeline.html");
        println!("  {me} lab down --dir {}", dir.display());
    } else {
        lab::run(lab::LabCommand::Down {
            dir: dir.to_path_buf(),
            purge: false,
        })?;
        println!(
            "the lab is stopped; its journal stays: {me} report -i {inv} --html timeline.html"
        );
    }
    result
}
