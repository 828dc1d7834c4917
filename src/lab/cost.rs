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
//! The estimates, and how they were derived from chatmail's deploy, are in
//! docs/performance.md ("The cost of a cmdeploy run").
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

const fn cost(wall_s: u64, cpu_s: u64) -> RunCost {
    RunCost {
        wall: Duration::from_secs(wall_s),
        cpu: Duration::from_secs(cpu_s),
    }
}

impl CmdeployCost {
    /// Estimates of the real cmdeploy against a relay across a WAN (docs/performance.md).
    pub const REAL: CmdeployCost = CmdeployCost {
        install_configure: cost(300, 30),
        disable_mail: cost(150, 33),
        full: cost(150, 33),
        activate: cost(45, 11),
    };

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
    fn the_file_lists_every_kind_scaled() {
        let text = CmdeployCost::REAL.scaled(0.1).to_string();
        assert!(
            text.contains("\ninstall-configure 30.000 3.000\n"),
            "{text}"
        );
        assert!(text.contains("\nactivate 4.500 1.100\n"), "{text}");
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 4);
    }
}
