//! The checkout's own venv, as chatmail's `scripts/initenv.sh` makes it (`python3 -m
//! venv --upgrade-deps venv`, then editable installs of chatmaild and cmdeploy),
//! without the docs tools (sphinx and friends) it adds at the end. It must be the
//! checkout's own: cmdeploy finds the repository root from its installed package
//! (`www.py`, `get_paths`: `Path(__file__)/../../../..`), and `scripts/cmdeploy`
//! sources `venv/bin/activate` relative to the working directory.
//!
//! pip needs PyPI (and, behind this machine's TLS-intercepting proxy, /etc/pip.conf's
//! `cert`); chatmaild's `crypt-r` compiles a C extension: python3-dev and gcc.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::lab::error::{LabError, Result};
use crate::lab::process::run;

/// Written into the venv when it is complete; a venv without it is made again.
const COMPLETE: &str = "cmfleet-lab-complete";

/// Debian's interpreter: python3-venv and python3-dev (which run-tests.sh installs) are
/// its packages; a `python3` earlier in PATH (a pyenv shim) may be another build.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// Makes `checkout/venv` unless a complete one is there; how long that took, or
/// `None` if it was there.
pub fn ensure(checkout: &Path) -> Result<Option<Duration>> {
    let venv = checkout.join("venv");
    if venv.join(COMPLETE).is_file() {
        return Ok(None);
    }
    let python = preflight()?;
    if venv.exists() {
        // Interrupted before the end: pip's state in it is unknown.
        fs::remove_dir_all(&venv).map_err(LabError::io(format!("remove {}", venv.display())))?;
    }
    let started = Instant::now();
    run(Command::new(&python).current_dir(checkout).args([
        "-m",
        "venv",
        "--upgrade-deps",
        "venv",
    ]))?;
    for package in ["chatmaild", "cmdeploy"] {
        run(Command::new(venv.join("bin/pip"))
            .current_dir(checkout)
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-e",
                package,
            ])
            // The operator's own virtualenv must not receive the packages.
            .env_remove("PIP_REQUIRE_VIRTUALENV")
            .env_remove("VIRTUAL_ENV")
            .env_remove("PYTHONPATH"))?;
    }
    fs::write(venv.join(COMPLETE), "").map_err(LabError::io(format!(
        "write {}",
        venv.join(COMPLETE).display()
    )))?;
    Ok(Some(started.elapsed()))
}

/// The interpreter to use, once what initenv.sh checks for is known to be there.
fn preflight() -> Result<PathBuf> {
    let python = if Path::new(DEBIAN_PYTHON).is_file() {
        PathBuf::from(DEBIAN_PYTHON)
    } else {
        PathBuf::from("python3")
    };
    let missing = |tool: &str| LabError::MissingTool {
        tool: tool.into(),
        hint: "apt-get install python3-venv python3-dev gcc (run-tests.sh installs them)",
    };
    // venv's ensurepip is the part Debian splits off into python3-venv.
    let has = |code: &str| {
        Command::new(&python)
            .args(["-c", code])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("import ensurepip") {
        return Err(missing("python3-venv"));
    }
    if !has("import os, sysconfig; assert os.path.isfile(os.path.join(sysconfig.get_paths()['include'], 'Python.h'))") {
        return Err(missing("python3-dev"));
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        return Err(missing("gcc"));
    }
    Ok(python)
}
