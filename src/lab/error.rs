//! The lab's one error type.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Everything that can go wrong while building, running or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab uses Linux mount namespaces; other systems cannot host it.
    #[error("the lab needs Linux (mount namespaces), this is {os} (hint: run it on a Debian 12 machine)")]
    NotLinux {
        /// `std::env::consts::OS` of this machine.
        os: &'static str,
    },
    /// Mount namespaces, bind mounts and sshd on port 22 all need root.
    #[error("the lab needs root (mount namespaces, bind mounts, sshd on port 22), running as uid {euid} (hint: run it as root, e.g. `sudo -E cargo test --test 'lab_*'`)")]
    NotRoot {
        /// The effective uid we run as.
        euid: u32,
    },
    /// A program the lab runs is not installed.
    #[error("the lab needs `{tool}`, which is not installed (hint: {hint})")]
    MissingTool {
        /// The program's name or path.
        tool: String,
        /// How to install it.
        hint: &'static str,
    },
    /// `unshare -m` did not work (e.g. inside an unprivileged container).
    #[error("cannot create a private mount namespace with `unshare -m`: {detail} (hint: the lab needs root on a machine or VM, not an unprivileged container)")]
    NoUnshare {
        /// What unshare said.
        detail: String,
    },
    /// A filesystem or process operation failed.
    #[error("cannot {context}: {source}")]
    Io {
        /// What we were doing, as "verb object".
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper program (ssh-keygen, git, ssh-add, ...) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the operator to retry by hand.
        command: String,
        /// Its exit status.
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
    },
    /// A lab host's sshd did not come up.
    #[error("lab host {addr} did not start: {detail} (see {log})")]
    HostStart {
        /// The host's address.
        addr: Ipv4Addr,
        /// Why we think it failed.
        detail: String,
        /// The host's log file.
        log: PathBuf,
    },
    /// The options make no sense.
    #[error("invalid lab options: {0}")]
    Options(String),
    /// The lab directory holds something that is not a lab: we never delete it.
    #[error("{dir} exists and is not a lab directory (no {file} in it) (hint: pick another --dir or remove it yourself)")]
    NotALabDir {
        /// The directory.
        dir: PathBuf,
        /// The record a lab of the kind asked for keeps there.
        file: &'static str,
    },
    /// The lab directory holds a lab of another kind: its `down` is another one's, so
    /// it is not replaced silently.
    #[error("{dir} holds a {kind} ({file} in it), not the kind asked for (hint: `cmfleet lab down --purge --dir {dir}` takes it down and removes it, or pick another --dir)", dir = dir.display())]
    OtherKindOfLab {
        /// The directory.
        dir: PathBuf,
        /// What kind of lab it holds.
        kind: &'static str,
        /// Its record.
        file: &'static str,
    },
    /// There is a running lab in that directory already.
    #[error("a lab is already running in {dir} (hint: `cmfleet lab down --dir {dir}` first)", dir = dir.display())]
    AlreadyRunning {
        /// The directory.
        dir: PathBuf,
    },
    /// No lab state where one was expected.
    #[error("no lab in {dir} (no lab.json) (hint: `cmfleet lab up --dir {dir}`)", dir = dir.display())]
    NoLab {
        /// The directory.
        dir: PathBuf,
    },
    /// The lab state file cannot be read.
    #[error("cannot parse lab state {path}: {source}")]
    State {
        /// The state file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The address is not one of this lab's hosts.
    #[error("{addr} is not a host of this lab")]
    UnknownHost {
        /// The address asked for.
        addr: Ipv4Addr,
    },
    /// `down` could not end every process.
    #[error("lab processes still alive after SIGKILL: {pids:?}")]
    Survivors {
        /// Their PIDs.
        pids: Vec<i32>,
    },
    /// A real lab host (a systemd container) did not boot to a usable state.
    #[error("real lab host {host} ({addr}) did not boot: {detail} (see {log})", log = log.display())]
    HostBoot {
        /// The host's name.
        host: String,
        /// Its address.
        addr: Ipv4Addr,
        /// What was seen last (the state systemd reported, or how the container ended).
        detail: String,
        /// The container's console log.
        log: PathBuf,
    },
    /// Another lab (or something else) uses the network a real lab asked for.
    #[error("the lab network {net} is in use: {detail} (hint: take down the lab that uses it, or pick another lab network)")]
    NetBusy {
        /// The /24, as `198.18.X.0/24`.
        net: String,
        /// What is there already.
        detail: String,
    },
    /// mmdebstrap could not build the real lab's Debian root filesystem.
    #[error("cannot build the Debian 12 root filesystem for real lab hosts: {detail} (see {log})", log = log.display())]
    RootfsBuild {
        /// The end of mmdebstrap's output.
        detail: String,
        /// mmdebstrap's whole log.
        log: PathBuf,
    },
    /// The machine's resolver cannot serve the containers.
    #[error("{path} names no nameserver that a container can reach (only loopback ones, or none) (hint: real lab hosts forward DNS to the machine's resolver through the lab bridge; give {path} a nameserver on a routed address)", path = path.display())]
    NoNameserver {
        /// The resolv.conf read.
        path: PathBuf,
    },
    /// A source the real-chatmail lab builds from (a git bundle) is not on this machine.
    #[error("cannot find {what}: tried {} (hint: {hint})", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ChatmailSource {
        /// What was looked for ("the chatmail relay bundle").
        what: &'static str,
        /// Every path tried, in order.
        tried: Vec<PathBuf>,
        /// How to provide it.
        hint: &'static str,
    },
    /// The chatmail relay repository has no such tag, branch or commit.
    #[error("{repo} has no ref `{reference}` (hint: a tag such as 1.9.0, a branch or a commit)", repo = repo.display())]
    UnknownRef {
        /// The repository or bundle cloned.
        repo: PathBuf,
        /// The ref asked for.
        reference: String,
    },
    /// None of cmfleet's lab overlays applies to the chosen chatmail version.
    #[error("no lab overlay applies to chatmail relay `{reference}` (tried {}) (hint: use --chatmail-ref 1.9.0 or 1.12.0, or adapt a patch in src/lab/assets/)", patches.join(", "))]
    NoOverlay {
        /// The ref checked out.
        reference: String,
        /// The patches tried.
        patches: Vec<&'static str>,
    },
    /// A directory holds a chatmail checkout other than the one asked for: never replaced.
    #[error("{path} is not the lab's chatmail checkout of `{reference}`: {detail} (hint: remove it, or pick another lab directory)", path = path.display())]
    CheckoutMismatch {
        /// The directory.
        path: PathBuf,
        /// The ref asked for.
        reference: String,
        /// What differs.
        detail: String,
    },
    /// A host key given for cmdeploy's known_hosts is not one `TYPE BASE64` line.
    #[error("host key for {addr} is not a single `TYPE BASE64 [comment]` line: {line:?}")]
    HostKey {
        /// The host's address.
        addr: std::net::IpAddr,
        /// What was given.
        line: String,
    },
}

impl LabError {
    /// Wraps an I/O error with what we were doing.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let context = context.into();
        move |source| LabError::Io { context, source }
    }
}

/// Shorthand for lab results.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
