//! `cmfleet lab up|down|status`.

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use super::addr::Subnet;
use super::cost::{CmdeployCost, CostModel};
use super::data::DataOptions;
use super::error::Result;
use super::fleet::{Lab, LabOptions, LabStatus, DEFAULT_DIR};
use super::real::fleet::{ChatmailLab, ChatmailLabOptions};

/// `cmfleet lab ...`: a real fleet of relay hosts on this machine (needs root).
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LabCommand {
    /// Start a lab: 2 sshd hosts per relay (OLD with data, NEW empty), an ssh-agent, a
    /// chatmail relay checkout with a stand-in cmdeploy, and DIR/inventory.toml.
    Up {
        /// Number of relays (1 to 127).
        #[arg(long, default_value_t = 3, env = "CMFLEET_LAB_RELAYS")]
        relays: usize,
        /// The lab directory (replaced if it holds a stopped lab).
        #[arg(long, default_value = DEFAULT_DIR, env = "CMFLEET_LAB_DIR")]
        dir: PathBuf,
        /// The lab's loopback /24, as 127.X.Y.
        #[arg(long, default_value = "127.77.0", env = "CMFLEET_LAB_SUBNET")]
        subnet: Subnet,
        /// Mailboxes per relay.
        #[arg(long, default_value_t = DataOptions::default().users)]
        users: usize,
        /// Messages per mailbox.
        #[arg(long, default_value_t = DataOptions::default().messages)]
        messages: usize,
        /// Bytes per message.
        #[arg(long, default_value_t = DataOptions::default().message_size)]
        message_size: usize,
        /// Seed of the generated mail.
        #[arg(long, default_value_t = DataOptions::default().seed)]
        seed: u64,
        /// What each stand-in cmdeploy run costs: `fast` (a fraction of a second) or
        /// `real` (the real cmdeploy's estimated wall time and controller CPU per kind
        /// of run, times --cmdeploy-scale; see docs/performance.md). Written to
        /// DIR/cmdeploy-cost, which the stand-in reads at every run.
        #[arg(long, value_enum, default_value_t = CostModel::Fast, env = "CMFLEET_LAB_CMDEPLOY_COST")]
        cmdeploy_cost: CostModel,
        /// Factor on the `real` model's times (0.05: a 300 s deploy takes 15 s).
        #[arg(long, default_value_t = 0.05, env = "CMFLEET_LAB_CMDEPLOY_SCALE")]
        cmdeploy_scale: f64,
        /// Real chatmail relays instead: every host a booted Debian 12 container
        /// (systemd-nspawn, on 198.18.X.0/24), every OLD deployed by chatmail's own
        /// `cmdeploy run`, NEW hosts fresh Debian 12. Minutes per relay; the data
        /// options do not apply.
        #[arg(long)]
        real_chatmail: bool,
        /// The real-chatmail lab's network: 198.18.X.0/24.
        #[arg(
            long,
            default_value_t = 1,
            value_name = "X",
            env = "CMFLEET_LAB_REAL_NET"
        )]
        real_net: u8,
        #[command(flatten)]
        chatmail: crate::lab::real::chatmail::ChatmailRelayArgs,
    },
    /// Stop every process of the lab (by recorded PID, then anything left in its hosts).
    Down {
        /// The lab directory.
        #[arg(long, default_value = DEFAULT_DIR, env = "CMFLEET_LAB_DIR")]
        dir: PathBuf,
        /// Also delete the lab directory.
        #[arg(long)]
        purge: bool,
    },
    /// Show the lab's hosts and what the stand-in cmdeploy did to them.
    Status {
        /// The lab directory.
        #[arg(long, default_value = DEFAULT_DIR, env = "CMFLEET_LAB_DIR")]
        dir: PathBuf,
    },
}

/// Runs a lab command, printing what it did and what to run next.
pub fn run(cmd: LabCommand) -> Result<()> {
    match cmd {
        LabCommand::Up {
            relays,
            dir,
            subnet,
            users,
            messages,
            message_size,
            seed,
            cmdeploy_cost,
            cmdeploy_scale,
            real_chatmail,
            real_net,
            chatmail,
        } => {
            if real_chatmail {
                return up_real_chatmail(dir, relays, real_net, &chatmail);
            }
            let started = Instant::now();
            let mut opts = LabOptions::new(dir, relays, subnet);
            opts.data = DataOptions {
                users,
                messages,
                message_size,
                seed,
            };
            if !(cmdeploy_scale.is_finite() && cmdeploy_scale >= 0.0) {
                return Err(super::error::LabError::Options(format!(
                    "--cmdeploy-scale must be a number >= 0, not {cmdeploy_scale}"
                )));
            }
            opts.cmdeploy_cost = match cmdeploy_cost {
                CostModel::Fast => None,
                CostModel::Real => Some(CmdeployCost::REAL.scaled(cmdeploy_scale)),
            };
            let opts_cost = opts.cmdeploy_cost;
            let lab = Lab::up(opts)?;
            let took = started.elapsed();
            let hosts = lab.hosts();
            let (first, last) = (hosts.first().map(|h| h.addr), hosts.last().map(|h| h.addr));
            println!(
                "lab up: {relays} relays, {} hosts ({} .. {}) in {:.2}s",
                hosts.len(),
                first.map(|a| a.to_string()).unwrap_or_default(),
                last.map(|a| a.to_string()).unwrap_or_default(),
                took.as_secs_f64()
            );
            println!("  data       {users} users x {messages} messages x {message_size} bytes per old host");
            println!("  dir        {}", lab.dir().display());
            println!(
                "  accounts   {} (ADDRESS PASSWORD OLD NEW; IMAP 143/993, SMTP 25/587/465)",
                lab.accounts_file().display()
            );
            println!("  inventory  {}", lab.inventory().display());
            println!(
                "  ssh        ssh -F {} relay1-old",
                lab.ssh_config().display()
            );
            println!(
                "  cmdeploy   cd {} && scripts/cmdeploy run --config ... --ssh-host ...",
                lab.checkout().display()
            );
            if let Some(c) = opts_cost {
                println!(
                    "  cost       each cmdeploy run as the real one x {cmdeploy_scale}: install,configure {:.1} s, --disable-mail {:.1} s, activate {:.1} s (wall; CPU burned on this machine: {:.1}, {:.1}, {:.1} s)",
                    c.install_configure.wall.as_secs_f64(),
                    c.disable_mail.wall.as_secs_f64(),
                    c.activate.wall.as_secs_f64(),
                    c.install_configure.cpu.as_secs_f64(),
                    c.disable_mail.cpu.as_secs_f64(),
                    c.activate.cpu.as_secs_f64(),
                );
            }
            println!("next: cmfleet plan -i {}", lab.inventory().display());
            println!("stop: cmfleet lab down --dir {}", lab.dir().display());
            Ok(())
        }
        LabCommand::Down { dir, purge } => {
            let real = ChatmailLab::is_one(&dir);
            let stopped = if real {
                ChatmailLab::down(&dir)?
            } else {
                Lab::down(&dir)?
            };
            println!(
                "lab down: stopped {} processes of the lab in {}",
                stopped.len(),
                dir.display()
            );
            for s in &stopped {
                println!("  {:>7}  {}", s.pid, s.what);
            }
            if purge && (real || dir.join(super::state::STATE_FILE).exists()) {
                std::fs::remove_dir_all(&dir).map_err(super::error::LabError::io(format!(
                    "remove {}",
                    dir.display()
                )))?;
                println!("removed {}", dir.display());
            }
            println!("next: cmfleet lab up --dir {}", dir.display());
            Ok(())
        }
        LabCommand::Status { dir } => {
            let status = Lab::status(&dir)?;
            print!("{status}");
            Ok(())
        }
    }
}

/// `lab up --real-chatmail`: real relays, deployed by chatmail's own cmdeploy.
fn up_real_chatmail(
    dir: PathBuf,
    relays: usize,
    net: u8,
    chatmail: &crate::lab::real::chatmail::ChatmailRelayArgs,
) -> Result<()> {
    let started = Instant::now();
    let lab = ChatmailLab::up(ChatmailLabOptions {
        dir,
        relays,
        net: crate::lab::real::RealNet::new(net),
        relay: chatmail.source()?,
    })?;
    let t = &lab.timings;
    println!(
        "lab up: {relays} real chatmail relays ({} hosts on {}) in {:.0}s",
        lab.hosts.hosts().len(),
        lab.hosts.net().cidr(),
        started.elapsed().as_secs_f64()
    );
    println!("  hosts      booted in {:.1}s", t.hosts.as_secs_f64());
    println!(
        "  chatmail   {} ({}), prepared in {:.1}s",
        lab.chatmail.checkout.display(),
        chatmail.chatmail_ref,
        t.chatmail.as_secs_f64()
    );
    match &lab.chatmail.filtermail {
        Some(path) => println!(
            "  filtermail {} (a pass-through stand-in: no encryption enforced)",
            path.display()
        ),
        None => println!("  filtermail chatmail's own (every part of the mail path is real)"),
    }
    for (host, took) in &t.deploys {
        println!(
            "  deployed   {host}: cmdeploy run in {:.1}s",
            took.as_secs_f64()
        );
    }
    println!("  inventory  {}", lab.inventory().display());
    println!(
        "  ssh        ssh -F {}/ssh_config relay1-old",
        lab.dir.display()
    );
    println!("next: cmfleet plan -i {}", lab.inventory().display());
    println!("stop: cmfleet lab down --dir {}", lab.dir.display());
    Ok(())
}

impl fmt::Display for LabStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let up = self.hosts.iter().filter(|h| h.sshd_running).count();
        writeln!(
            f,
            "lab {}: {up}/{} hosts up, agent {}",
            self.dir.display(),
            self.hosts.len(),
            if self.agent_running {
                "running"
            } else {
                "stopped"
            }
        )?;
        writeln!(
            f,
            "  {:<12} {:<16} {:<6} {:<10} {:<6} {:<8} runs",
            "host", "address", "sshd", "configured", "mail", "active"
        )?;
        for h in &self.hosts {
            let sshd = match (h.sshd_running, h.ssh_open) {
                (true, true) => "up",
                (true, false) => "noport",
                (false, _) => "down",
            };
            let yn = |b: bool| if b { "yes" } else { "no" };
            writeln!(
                f,
                "  {:<12} {:<16} {:<6} {:<10} {:<6} {:<8} {}",
                h.host.name,
                h.host.addr.to_string(),
                sshd,
                yn(h.state.configured),
                // What runs, not what was recorded: a crashed daemon shows here.
                match (h.state.postfix_pid, h.state.dovecot_pid) {
                    (Some(_), Some(_)) => "up",
                    (None, None) if h.state.mail_disabled => "off",
                    (None, None) => "down",
                    _ => "part",
                },
                yn(h.state.active),
                h.state.invocations.len()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        lab: LabCommand,
    }

    #[test]
    fn up_takes_the_cmdeploy_cost_model_fast_by_default() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.lab) {
            Ok(LabCommand::Up {
                cmdeploy_cost,
                cmdeploy_scale,
                ..
            }) => (cmdeploy_cost, cmdeploy_scale),
            other => panic!("parsed as {other:?}"),
        };
        assert_eq!(parse(&["lab", "up"]).0, CostModel::Fast);
        assert_eq!(
            parse(&[
                "lab",
                "up",
                "--cmdeploy-cost",
                "real",
                "--cmdeploy-scale",
                "0.2"
            ]),
            (CostModel::Real, 0.2)
        );
        assert!(Cli::try_parse_from(["lab", "up", "--cmdeploy-cost", "slow"]).is_err());
    }

    #[test]
    fn up_parses_relays_dir_and_subnet() {
        let cli = Cli::try_parse_from([
            "lab", "up", "--relays", "5", "--dir", "/tmp/x", "--subnet", "127.9.9",
        ])
        .unwrap();
        match cli.lab {
            LabCommand::Up {
                relays,
                dir,
                subnet,
                users,
                ..
            } => {
                assert_eq!(
                    (relays, dir, subnet, users),
                    (5, PathBuf::from("/tmp/x"), Subnet::new(9, 9), 100)
                );
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["lab", "up", "--subnet", "10.0.0"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["lab", "down"]).unwrap().lab,
            LabCommand::Down { purge: false, .. }
        ));
    }
}
