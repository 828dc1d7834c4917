//! Where the real-chatmail lab's sources come from: the chatmail relay repository (a
//! git bundle or a repository, and the ref to check out) and the chatmail-turn bundle.
//! By default both are the bundles in `../shared/chatmail/` beside the cmfleet tree
//! (this machine reaches no GitHub; a CI checkout has `shared/` beside it too).

use std::path::{Path, PathBuf};

use crate::lab::error::{LabError, Result};

/// The relay version the lab deploys unless told otherwise: the last one whose
/// filtermail is chatmail's own Python (1.10 downloads a Rust filtermail that is not to
/// be had here), so every part of the mail path is real.
pub const DEFAULT_REF: &str = "1.9.0";

/// `--chatmail-relay PATH` and `--chatmail-ref REF`, for `cmfleet lab up` to flatten.
#[derive(Debug, Clone, clap::Args)]
pub struct ChatmailRelayArgs {
    /// The chatmail relay repository the real-chatmail lab clones: a git bundle or a
    /// repository [default: ../shared/chatmail/relay.bundle beside the cmfleet tree]
    #[arg(long, value_name = "PATH", env = "CMFLEET_LAB_CHATMAIL_RELAY")]
    pub chatmail_relay: Option<PathBuf>,
    /// The tag, branch or commit of it to deploy (a lab overlay must apply to it:
    /// 1.9.0 and 1.12.0 are known to work)
    #[arg(long, value_name = "REF", default_value = DEFAULT_REF, env = "CMFLEET_LAB_CHATMAIL_REF")]
    pub chatmail_ref: String,
}

impl ChatmailRelayArgs {
    /// The source these arguments name, the shared bundle when no path is given.
    pub fn source(&self) -> Result<RelaySource> {
        let repo = match &self.chatmail_relay {
            Some(p) => p.clone(),
            None => shared_file("relay.bundle", "the chatmail relay bundle")?,
        };
        RelaySource::new(repo, &self.chatmail_ref)
    }
}

/// A chatmail relay repository and the ref to deploy from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySource {
    /// A git bundle or repository (anything `git clone` takes).
    pub repo: PathBuf,
    /// A tag, branch or commit in it.
    pub reference: String,
}

impl RelaySource {
    /// Checks the ref: it reaches git's command line, so it must not look like an option.
    pub fn new(repo: impl Into<PathBuf>, reference: &str) -> Result<RelaySource> {
        let bad = reference.is_empty()
            || reference.starts_with('-')
            || reference
                .chars()
                .any(|c| c.is_whitespace() || c.is_control());
        if bad {
            return Err(LabError::Options(format!(
                "--chatmail-ref {reference:?} is not a git ref"
            )));
        }
        Ok(RelaySource {
            repo: repo.into(),
            reference: reference.to_string(),
        })
    }

    /// The shared relay bundle at `DEFAULT_REF`.
    pub fn shared_default() -> Result<RelaySource> {
        RelaySource::shared(DEFAULT_REF)
    }

    /// The shared relay bundle at `reference`.
    pub fn shared(reference: &str) -> Result<RelaySource> {
        RelaySource::new(
            shared_file("relay.bundle", "the chatmail relay bundle")?,
            reference,
        )
    }
}

/// The shared chatmail-turn bundle (its tags are the versions the relay downloads).
pub fn shared_turn_bundle() -> Result<PathBuf> {
    shared_file("chatmail-turn.bundle", "the chatmail-turn bundle")
}

/// `shared/chatmail/NAME` beside the cmfleet tree this was built from; on this machine
/// also /work/shared, where the tree may be a worktree elsewhere.
fn shared_file(name: &str, what: &'static str) -> Result<PathBuf> {
    let tree = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tried: Vec<PathBuf> = [
        tree.join("../shared/chatmail"),
        "/work/shared/chatmail".into(),
    ]
    .into_iter()
    .map(|dir| dir.join(name))
    .collect();
    match tried.iter().find(|p| p.is_file()) {
        Some(p) => Ok(p.clone()),
        None => Err(LabError::ChatmailSource {
            what,
            tried,
            hint: "put shared/chatmail/ beside the cmfleet tree, or pass --chatmail-relay PATH",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Up {
        #[command(flatten)]
        chatmail: ChatmailRelayArgs,
    }

    #[test]
    fn the_flags_name_a_repository_and_a_ref_defaulting_to_1_9_0() {
        let up = Up::parse_from([
            "up",
            "--chatmail-relay",
            "/r.bundle",
            "--chatmail-ref",
            "1.12.0",
        ]);
        let source = up.chatmail.source().unwrap();
        assert_eq!(
            (source.repo.as_path(), source.reference.as_str()),
            (Path::new("/r.bundle"), "1.12.0")
        );
        let up = Up::parse_from(["up", "--chatmail-relay", "/r.bundle"]);
        assert_eq!(up.chatmail.chatmail_ref, DEFAULT_REF);
        assert!(Up::try_parse_from(["up", "--chatmail-ref", "-x"])
            .map_or(true, |u| u.chatmail.source().is_err()));
    }

    #[test]
    fn refs_that_look_like_options_or_hold_spaces_are_refused() {
        for bad in ["", "-c", "--upload-pack=x", "1.9.0 x", "a\nb"] {
            assert!(RelaySource::new("/r", bad).is_err(), "{bad:?}");
        }
        for good in ["1.9.0", "main", "7191329a", "refs/tags/1.12.0"] {
            assert_eq!(RelaySource::new("/r", good).unwrap().reference, good);
        }
    }
}
