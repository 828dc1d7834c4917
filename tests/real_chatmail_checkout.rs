//! The real-chatmail lab's checkout: a clone of the shared relay bundle at 1.9.0 with
//! the lab's overlay commit, its venv, the cached binaries, a relay's chatmail.ini and
//! cmdeploy's ssh home. Everything short of running cmdeploy against a host.
//!
//! On a cold machine this builds iroh-relay and chatmail-turn into
//! /var/cache/cmfleet-lab (minutes, once) and installs the venv from PyPI; it needs
//! root (the cache), the shared bundles, python3-venv, python3-dev and gcc.

use std::fs;
use std::io::Read;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use cmfleet::lab::real::chatmail::{
    prepare, prepare_checkout, wanted, write_cmdeploy_home, write_relay_ini, PrepareOptions,
    RealChatmail, RelaySource, Wanted, DEFAULT_REF, ENV_BINARIES, ENV_DEBIAN_DOVECOT,
    ENV_FILTERMAIL, ENV_SELF_SIGNED, LAB_NAME,
};
use cmfleet::lab::LabError;

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd`, fails the test unless it succeeds, returns its stdout.
fn stdout(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    stdout(Command::new("git").current_dir(dir).args(args))
}

/// A Python snippet in the checkout's venv, with the lab's switches removed. Not from
/// the checkout: `python -c` puts the working directory first in sys.path, where the
/// checkout's `cmdeploy/` directory would join the `cmdeploy` namespace package
/// (it has no __init__.py) ahead of the installed one.
fn venv_python(real: &RealChatmail, code: &str) -> String {
    stdout(
        Command::new(real.checkout.join("venv/bin/python"))
            .current_dir("/")
            .args(["-c", code])
            .env_remove(ENV_BINARIES)
            .env_remove(ENV_DEBIAN_DOVECOT)
            .env_remove(ENV_SELF_SIGNED),
    )
}

#[test]
fn a_checkout_at_1_9_0_has_the_overlay_a_venv_binaries_an_ini_and_an_ssh_home() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: the binaries are cached in /var/cache/cmfleet-lab"
    );
    let dir = tempfile::Builder::new()
        .prefix("cmfleet-real-chatmail-")
        .tempdir()
        .unwrap();
    let opts = PrepareOptions::new(RelaySource::shared_default().unwrap()).unwrap();
    assert_eq!(opts.relay.reference, DEFAULT_REF);
    let real = prepare(dir.path(), &opts).unwrap_or_else(|e| panic!("prepare: {e}"));
    for b in &real.binaries {
        match b.built_in {
            Some(t) => eprintln!("built {} in {:.0} s (cold)", b.name, t.as_secs_f64()),
            None => eprintln!("{} was cached: {}", b.name, b.path.display()),
        }
    }
    if let Some(t) = real.venv_built_in {
        eprintln!("venv made in {:.0} s", t.as_secs_f64());
    }
    let checkout = &real.checkout;
    assert_eq!(checkout, &dir.path().join("relay"));

    // One overlay commit by the lab, on top of 1.9.0, changing exactly the overlay's files.
    assert_eq!(real.overlay.name, "chatmail-1.9.0-lab.patch");
    let tag = git(checkout, &["rev-parse", "1.9.0^{commit}"]);
    assert_eq!(git(checkout, &["rev-parse", "HEAD^"]), tag);
    assert_eq!(
        git(checkout, &["log", "-1", "--format=%an|%cn"]).trim(),
        format!("{LAB_NAME}|{LAB_NAME}")
    );
    let changed = git(checkout, &["diff", "--name-only", "HEAD^", "HEAD"]);
    assert_eq!(changed.lines().collect::<Vec<_>>(), real.overlay.files);
    assert_eq!(
        git(checkout, &["branch", "--show-current"]).trim(),
        "cmfleet-lab"
    );

    // The venv (untracked), pip's egg-info and the binaries leave the tree clean.
    assert_eq!(git(checkout, &["status", "--porcelain"]), "");

    // The real cmdeploy runs from the checkout as chatmail's wrapper starts it.
    let help = stdout(
        Command::new(real.cmdeploy())
            .current_dir(checkout)
            .args(["run", "--help"]),
    );
    for option in [
        "--ssh-host",
        "--disable-mail",
        "--skip-dns-check",
        "--config",
    ] {
        assert!(help.contains(option), "{option} not in: {help}");
    }
    // cmdeploy finds the repository root from its installed package: the checkout's.
    let root = venv_python(
        &real,
        "import importlib.resources as r; print(r.files('cmdeploy').joinpath('../../..').resolve())",
    );
    assert_eq!(Path::new(root.trim()), checkout.canonicalize().unwrap());

    // The binaries: executable ELF files in the machine's cache, linked under the
    // names the overlay uploads.
    let names: Vec<&str> = real.binaries.iter().map(|b| b.name).collect();
    assert_eq!(names, ["chatmail-turn", "iroh-relay", "mtail"]);
    for b in &real.binaries {
        assert!(
            b.path.starts_with("/var/cache/cmfleet-lab/bin"),
            "{}",
            b.path.display()
        );
        let mut magic = [0u8; 4];
        fs::File::open(&b.path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .unwrap_or_else(|e| panic!("read {}: {e}", b.path.display()));
        assert_eq!(&magic, b"\x7fELF", "{}", b.path.display());
        let mode = fs::metadata(&b.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{} mode {mode:o}", b.path.display());
        let link = real.binaries_dir.join(b.name);
        assert_eq!(
            fs::canonicalize(&link).unwrap(),
            fs::canonicalize(&b.path).unwrap()
        );
    }
    assert!(
        real.binaries
            .iter()
            .any(|b| b.path.ends_with("chatmail-turn-v0.3")),
        "1.9.0 downloads chatmail-turn v0.3"
    );
    let env = real.env(None);
    assert!(env
        .iter()
        .any(|(k, v)| *k == ENV_BINARIES && Path::new(v) == real.binaries_dir));
    // 1.9.0's filtermail is chatmail's own Python: no stand-in, no upstream switch.
    assert_eq!(real.filtermail, None);
    assert!(!env.iter().any(|(k, _)| *k == ENV_FILTERMAIL));

    // Without the switches, upstream's downloads run: the overlay only adds early
    // returns in front of them, and its helpers answer "not in the lab".
    let deployers =
        fs::read_to_string(checkout.join("cmdeploy/src/cmdeploy/deployers.py")).unwrap();
    for upstream in [
        "curl -L {url} >/usr/local/bin/chatmail-turn.new",
        "curl -L {url} | gunzip | tar -x -f - ./iroh-relay",
        "AcmetoolDeployer(config.acme_email, tls_domains)",
    ] {
        assert!(deployers.contains(upstream), "{upstream}");
    }
    let mtail =
        fs::read_to_string(checkout.join("cmdeploy/src/cmdeploy/mtail/deployer.py")).unwrap();
    assert!(mtail.contains("curl -L {url} | gunzip | tar -x -f - mtail"));
    let dovecot =
        fs::read_to_string(checkout.join("cmdeploy/src/cmdeploy/dovecot/deployer.py")).unwrap();
    assert!(dovecot.contains("https://download.delta.chat/dovecot/"));
    let removed: Vec<String> = git(checkout, &["diff", "HEAD^", "HEAD"])
        .lines()
        .filter(|l| l.starts_with('-') && !l.starts_with("---"))
        .map(String::from)
        .collect();
    assert_eq!(
        removed,
        ["-        AcmetoolDeployer(config.acme_email, tls_domains),"],
        "the overlay removes no upstream line but the one it puts in an `else`"
    );
    assert_eq!(
        venv_python(
            &real,
            "from cmdeploy import lab; print(lab.put_binary('iroh-relay', '/x'), lab.debian_dovecot(), lab.self_signed())"
        )
        .trim(),
        "None False False"
    );

    // A relay's chatmail.ini, as `cmdeploy init` writes it, read back by chatmaild.
    let ini = write_relay_ini(dir.path(), checkout, "_relay1.lab").unwrap();
    assert_eq!(ini, dir.path().join("relays/_relay1.lab/chatmail.ini"));
    let text = fs::read_to_string(&ini).unwrap();
    assert!(text.contains("mail_domain = _relay1.lab"), "{text}");
    let code = format!(
        "from chatmaild.config import read_config; c = read_config({:?}); print(c.mail_domain, c.username_min_length)",
        ini.display().to_string()
    );
    assert_eq!(venv_python(&real, &code).trim(), "_relay1.lab 9");
    assert!(write_relay_ini(dir.path(), checkout, "relay1.lab").is_err());

    // cmdeploy's ssh home: both of its ssh clients read the lab's config.
    let key = dir.path().join("id_ed25519");
    stdout(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key),
    );
    let host_key = fs::read_to_string(key.with_extension("pub")).unwrap();
    let addr: IpAddr = "198.18.0.2".parse().unwrap();
    let home = write_cmdeploy_home(dir.path(), &key, &[(addr, host_key.trim())]).unwrap();
    let known = fs::read_to_string(home.known_hosts()).unwrap();
    assert!(known.starts_with("198.18.0.2 ssh-ed25519 "), "{known}");
    // The system ssh (cmdeploy's DNS check, pyinfra's rsync) through the wrapper in PATH.
    let mut ssh = Command::new("ssh");
    ssh.args(["-G", "198.18.0.2"]);
    for (k, v) in home.env(std::env::var_os("PATH")) {
        ssh.env(k, v);
    }
    let g = stdout(&mut ssh);
    assert!(
        g.contains(&format!("identityfile {}", key.display())),
        "{g}"
    );
    assert!(
        g.contains(&format!(
            "userknownhostsfile {}",
            home.known_hosts().display()
        )),
        "{g}"
    );
    assert!(g.lines().any(|l| l == "user root"), "{g}");
    // paramiko (pyinfra) with HOME set, as pyinfra loads ~/.ssh/config.
    let code = "import os, paramiko; c = paramiko.SSHConfig.from_path(os.path.expanduser('~/.ssh/config')).lookup('198.18.0.2'); print(c['user'], c['identityfile'][0])";
    let mut py = Command::new(checkout.join("venv/bin/python"));
    py.args(["-c", code]);
    for (k, v) in home.env(std::env::var_os("PATH")) {
        py.env(k, v);
    }
    assert_eq!(stdout(&mut py).trim(), format!("root {}", key.display()));
}

/// The overlay is chosen by what applies: 1.12.0 has its own (`download_executable`),
/// 1.10.0 takes none and says so; a checkout is reused only for the same ref.
#[test]
fn each_version_gets_the_overlay_that_applies_or_a_clear_error() {
    let dir = tempfile::Builder::new()
        .prefix("cmfleet-real-chatmail-refs-")
        .tempdir()
        .unwrap();
    let bundle = RelaySource::shared_default().unwrap().repo;
    let source = |r: &str| RelaySource::new(&bundle, r).unwrap();

    let lab = dir.path().join("a");
    let overlay = prepare_checkout(&lab, &source("1.12.0")).unwrap();
    assert_eq!(overlay.name, "chatmail-1.12.0-lab.patch");
    // 1.12.0 downloads the Rust filtermail: the lab gives it its pass-through instead.
    assert!(overlay.filtermail_standin);
    let checkout = lab.join("relay");
    assert_eq!(git(&checkout, &["status", "--porcelain"]), "");
    let changed = git(&checkout, &["diff", "--name-only", "HEAD^", "HEAD"]);
    assert_eq!(changed.lines().collect::<Vec<_>>(), overlay.files);
    assert_eq!(
        wanted(&checkout).unwrap(),
        Wanted {
            chatmail_turn: Some("v0.4".into()),
            iroh_relay: Some("0.35.0".into()),
            mtail: true
        }
    );
    // Prepared again: the same checkout, kept as it is.
    let head = git(&checkout, &["rev-parse", "HEAD"]);
    assert_eq!(prepare_checkout(&lab, &source("1.12.0")).unwrap(), overlay);
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), head);
    // Asked for another version: refused, not replaced.
    let err = prepare_checkout(&lab, &source("1.9.0")).unwrap_err();
    assert!(matches!(err, LabError::CheckoutMismatch { .. }), "{err}");
    assert_eq!(git(&checkout, &["rev-parse", "HEAD"]), head);

    let lab = dir.path().join("b");
    let err = prepare_checkout(&lab, &source("1.10.0")).unwrap_err();
    assert!(matches!(err, LabError::NoOverlay { .. }), "{err}");
    assert!(err.to_string().contains("1.10.0"), "{err}");
    let err = prepare_checkout(&lab, &source("9.9.9")).unwrap_err();
    assert!(matches!(err, LabError::UnknownRef { .. }), "{err}");
    // Nothing half-made stays behind.
    assert_eq!(fs::read_dir(&lab).unwrap().count(), 0);
}
