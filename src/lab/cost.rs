//! What a cmdeploy run costs: wall time and controller CPU per kind of invocation.
//!
//! The lab's stand-in answers in a fraction of a second, while the real `cmdeploy run`
//! is a pyinfra deploy of a whole relay: minutes of wall time and tens of seconds of
//! Python CPU on the controller per run. To measure a night that looks like a real one,
//! the stand-in reads `DIR/cmdeploy-cost` (written by [`Lab::set_cmdeploy_cost`] or
//! `cmfleet lab up --cmdeploy-cost real --cmdeploy-scale F`) and, before its effect on
//! the host, burns the CPU in a busy process on the controller while it sleeps the wall
//! time (a run takes at least its wall time; more when the CPU is contended, as the real
//! one does). Without the file (the default) it costs nothing extra, so tests stay fast.
//!
//! The costs are measured: chatmail's real deploy (relay 1.9.0) run by cmfleet in the
//! real-chatmail lab ([`CmdeployCost::LAB`], zero network latency), plus what a network
//! adds, which the lab cannot show: pyinfra runs each operation as round trips over
//! ssh, so a run across a network takes `operations x ROUND_TRIPS_PER_OPERATION x RTT`
//! longer ([`CmdeployCost::across`]; [`CmdeployCost::REAL`] at 50 ms). The figures and
//! how they were taken: docs/performance.md ("The cost of a cmdeploy run").
//!
//! [`Lab::set_cmdeploy_cost`]: super::Lab::set_cmdeploy_cost

use std::fmt;
use std::time::Duration;

/// The kinds of `cmdeploy run` cmfleet and the guide make, told apart as the stand-in
/// sees them (stages and `--disable-mail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdeployKind {
    /// `CMDEPLOY_STAGES=install,configure` on a fresh NEW (step 2).
    InstallConfigure,
    /// All stages with `--disable-mail` on an installed host (step 3 on OLD; rollback
    /// on NEW).
    DisableMail,
    /// All stages without `--disable-mail` on an installed host (rollback on OLD).
    Full,
    /// `CMDEPLOY_STAGES=activate` (step 6 on NEW).
    Activate,
}

impl CmdeployKind {
    pub const ALL: [CmdeployKind; 4] = [
        CmdeployKind::InstallConfigure,
        CmdeployKind::DisableMail,
        CmdeployKind::Full,
        CmdeployKind::Activate,
    ];

    /// The name in `DIR/cmdeploy-cost` (the stand-in computes the same from its stages).
    pub fn name(self) -> &'static str {
        match self {
            CmdeployKind::InstallConfigure => "install-configure",
            CmdeployKind::DisableMail => "disable-mail",
            CmdeployKind::Full => "full",
            CmdeployKind::Activate => "activate",
        }
    }
}

/// One kind's cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunCost {
    /// Wall time of the run (at least; CPU contention makes it longer).
    pub wall: Duration,
    /// CPU the run burns on the controller (pyinfra is Python on the controller).
    pub cpu: Duration,
}

/// Cost of every kind of run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CmdeployCost {
    pub install_configure: RunCost,
    pub disable_mail: RunCost,
    pub full: RunCost,
    pub activate: RunCost,
}

const fn cost(wall_ms: u64, cpu_ms: u64) -> RunCost {
    RunCost {
        wall: Duration::from_millis(wall_ms),
        cpu: Duration::from_millis(cpu_ms),
    }
}

/// `c` with `kind`'s round trips at `rtt` added to its wall time.
const fn with_rtt(kind: CmdeployKind, c: RunCost, rtt: Duration) -> RunCost {
    let ms = kind.operations() as u64 * ROUND_TRIPS_PER_OPERATION as u64 * rtt.as_millis() as u64;
    RunCost {
        wall: Duration::from_millis(c.wall.as_millis() as u64 + ms),
        cpu: c.cpu,
    }
}

/// Round trips pyinfra makes per operation (its fact, the operation's command, the
/// channel for each over paramiko): the assumption behind [`CmdeployCost::across`].
pub const ROUND_TRIPS_PER_OPERATION: u32 = 3;

/// The round-trip time [`CmdeployCost::REAL`] assumes: a controller in another
/// datacenter from its relays.
pub const WAN_RTT: Duration = Duration::from_millis(50);

impl CmdeployKind {
    /// pyinfra operations in a run of this kind (counted in the lab's deploy logs of
    /// relay 1.9.0: a repeated full run has 126, an activate-only run 24).
    pub const fn operations(self) -> u32 {
        match self {
            CmdeployKind::InstallConfigure => 110,
            CmdeployKind::DisableMail | CmdeployKind::Full => 126,
            CmdeployKind::Activate => 24,
        }
    }
}

impl CmdeployCost {
    /// Measured in the real-chatmail lab at zero latency (docs/performance.md, "The real
    /// cmdeploy"): wall time of one run on its own, controller CPU of the cmdeploy
    /// process tree.
    pub const LAB: CmdeployCost = CmdeployCost {
        install_configure: cost(68_000, 4_600),
        disable_mail: cost(26_000, 5_000),
        full: cost(27_000, 5_000),
        activate: cost(8_500, 1_600),
    };

    /// [`CmdeployCost::LAB`] with a network of round-trip time `rtt` between the
    /// controller and the relay: every operation's round trips add wall time, not CPU.
    pub const fn across(rtt: Duration) -> CmdeployCost {
        let l = CmdeployCost::LAB;
        CmdeployCost {
            install_configure: with_rtt(CmdeployKind::InstallConfigure, l.install_configure, rtt),
            disable_mail: with_rtt(CmdeployKind::DisableMail, l.disable_mail, rtt),
            full: with_rtt(CmdeployKind::Full, l.full, rtt),
            activate: with_rtt(CmdeployKind::Activate, l.activate, rtt),
        }
    }

    /// The lab's measurements across a WAN ([`WAN_RTT`]): what the benchmark's
    /// `--cmdeploy-model real` and `lab up --cmdeploy-cost real` use.
    pub const REAL: CmdeployCost = CmdeployCost::across(WAN_RTT);

    pub fn of(&self, kind: CmdeployKind) -> RunCost {
        match kind {
            CmdeployKind::InstallConfigure => self.install_configure,
            CmdeployKind::DisableMail => self.disable_mail,
            CmdeployKind::Full => self.full,
            CmdeployKind::Activate => self.activate,
        }
    }

    /// Every wall time and CPU time times `factor` (the lab runs a night in minutes).
    pub fn scaled(&self, factor: f64) -> CmdeployCost {
        let f = factor.max(0.0);
        let s = |c: RunCost| RunCost {
            wall: c.wall.mul_f64(f),
            cpu: c.cpu.mul_f64(f),
        };
        CmdeployCost {
            install_configure: s(self.install_configure),
            disable_mail: s(self.disable_mail),
            full: s(self.full),
            activate: s(self.activate),
        }
    }
}

/// The model `cmfleet lab up --cmdeploy-cost` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CostModel {
    /// The stand-in's own cost: a fraction of a second per run.
    #[default]
    Fast,
    /// The real cmdeploy's estimated cost, times `--cmdeploy-scale`.
    Real,
}

/// `DIR/cmdeploy-cost`: `KIND WALL_SECONDS CPU_SECONDS` per line, already scaled.
impl fmt::Display for CmdeployCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# cmdeploy cost per run (cmfleet lab): KIND WALL_SECONDS CPU_SECONDS"
        )?;
        for k in CmdeployKind::ALL {
            let c = self.of(k);
            writeln!(
                f,
                "{} {:.3} {:.3}",
                k.name(),
                c.wall.as_secs_f64(),
                c.cpu.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_adds_its_round_trips_to_the_wall_time_only() {
        let wan = CmdeployCost::across(Duration::from_millis(50));
        // 24 operations x 3 round trips x 50 ms = 3.6 s more.
        assert_eq!(wan.activate.wall, Duration::from_millis(8_500 + 3_600));
        assert_eq!(wan.activate.cpu, CmdeployCost::LAB.activate.cpu);
        assert_eq!(CmdeployCost::across(Duration::ZERO), CmdeployCost::LAB);
        assert_eq!(CmdeployCost::REAL, wan);
    }

    #[test]
    fn the_file_lists_every_kind_scaled() {
        let text = CmdeployCost::LAB.scaled(0.1).to_string();
        assert!(text.contains("\ninstall-configure 6.800 0.460\n"), "{text}");
        assert!(text.contains("\nactivate 0.850 0.160\n"), "{text}");
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 4);
    }
}
