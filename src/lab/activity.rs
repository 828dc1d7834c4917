//! Mail activity between the first and the final sync: what makes the final sync hard.
//! New deliveries, messages a client has seen (new/NAME -> cur/NAME:2,S), flag changes
//! in cur/ (NAME:2, -> NAME:2,S: a rename, so a sync without --delete leaves the old name
//! behind) and expunged messages.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::data::{set_mtime, Bodies};
use super::error::{LabError, Result};
use super::users::LabUsers;

/// How much activity to simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activity {
    /// Newly delivered messages (in some mailbox's new/).
    pub new_messages: usize,
    /// Messages moved from new/ to cur/ with the Seen flag.
    pub seen: usize,
    /// Messages in cur/ whose flags change from `:2,` to `:2,S`.
    pub flag_changes: usize,
    /// Messages deleted.
    pub deletions: usize,
    /// Size of new messages in bytes.
    pub message_size: usize,
    /// The same seed on the same tree does the same things.
    pub seed: u64,
}

/// What `simulate` did, as paths relative to the mail root (/home/vmail/mail).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityReport {
    /// Files created.
    pub created: Vec<PathBuf>,
    /// Files renamed, (from, to).
    pub renamed: Vec<(PathBuf, PathBuf)>,
    /// Files removed.
    pub deleted: Vec<PathBuf>,
}

/// Whether a maildir file name is one the lab wrote (bulk data: `TS.MmPp.DOMAIN,S=..`;
/// earlier activity: `TS.MiPseed.lab-activity,S=..`). Messages that came through
/// Postfix and Dovecot are named after their delivery's time and process, different in
/// every lab: activity leaves them alone, so the same seed on the same data does the
/// same things.
fn written_by_lab(name: &str, domain: &str) -> bool {
    let base = name.split(',').next().unwrap_or_default();
    base.ends_with(&format!(".{domain}")) || base.ends_with(".lab-activity")
}

/// Maildir message files the lab wrote under `mail_root` (DOMAIN/ADDR/{cur,new}/*),
/// sorted.
fn messages(mail_root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let read = |p: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = fs::read_dir(p)
            .map_err(LabError::io(format!("list {}", p.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    for dom in read(mail_root)? {
        if !dom.is_dir() {
            continue;
        }
        for user in read(&dom)? {
            for sub in ["cur", "new"] {
                let d = user.join(sub);
                if d.is_dir() {
                    let domain = dom
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    out.extend(read(&d)?.into_iter().filter(|p| {
                        p.is_file()
                            && p.file_name()
                                .is_some_and(|n| written_by_lab(&n.to_string_lossy(), &domain))
                    }));
                }
            }
        }
    }
    Ok(out)
}

/// Applies `activity` to the mail tree at `mail_root` (a host path from
/// `LabHost::path("/home/vmail/mail")`), owning new files by vmail. Asks for more than
/// the tree holds are cut to what it holds.
pub fn simulate(mail_root: &Path, users: &LabUsers, activity: &Activity) -> Result<ActivityReport> {
    let mut rng = StdRng::seed_from_u64(activity.seed);
    let mut files = messages(mail_root)?;
    files.shuffle(&mut rng);
    let rel = |p: &Path| p.strip_prefix(mail_root).unwrap_or(p).to_path_buf();
    let in_dir = |p: &Path, d: &str| {
        p.parent()
            .and_then(|x| x.file_name())
            .is_some_and(|n| n == d)
    };
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };

    let mut report = ActivityReport::default();
    let (mut seen, mut flags, mut dels) = (0, 0, 0);
    for f in &files {
        let n = name(f);
        let target = if seen < activity.seen && in_dir(f, "new") {
            seen += 1;
            let cur = f.parent().and_then(Path::parent).map(|u| u.join("cur"));
            cur.map(|c| c.join(format!("{n}:2,S")))
        } else if flags < activity.flag_changes && in_dir(f, "cur") && n.ends_with(":2,") {
            flags += 1;
            Some(f.with_file_name(format!("{n}S")))
        } else if dels < activity.deletions {
            dels += 1;
            fs::remove_file(f).map_err(LabError::io(format!("delete {}", f.display())))?;
            report.deleted.push(rel(f));
            None
        } else {
            None
        };
        if let Some(to) = target {
            fs::rename(f, &to).map_err(LabError::io(format!("rename {}", f.display())))?;
            report.renamed.push((rel(f), rel(&to)));
        }
    }

    let mut mailboxes: Vec<PathBuf> = Vec::new();
    for dom in
        fs::read_dir(mail_root).map_err(LabError::io(format!("list {}", mail_root.display())))?
    {
        let dom = dom.map_err(LabError::io("list mail domains"))?.path();
        if let Ok(rd) = fs::read_dir(&dom) {
            mailboxes.extend(
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.join("new").is_dir()),
            );
        }
    }
    mailboxes.sort();
    if !mailboxes.is_empty() {
        let bodies = Bodies::new(&mut rng);
        for i in 0..activity.new_messages {
            let mb = &mailboxes[rng.random_range(0..mailboxes.len())];
            let ts = 1_800_000_000 + i as u64;
            let size = activity.message_size.max(64);
            let path = mb.join("new").join(format!(
                "{ts}.M{i}P{}.lab-activity,S={size},W={size}",
                activity.seed
            ));
            let to = mb
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let body = bodies.message(
                &mut rng,
                "late-sender@example.org",
                &to,
                "arrived late",
                size,
            );
            fs::write(&path, body).map_err(LabError::io(format!("write {}", path.display())))?;
            chown(&path, Some(users.vmail_uid), Some(users.vmail_gid))
                .map_err(LabError::io(format!("chown {}", path.display())))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(LabError::io(format!("chmod {}", path.display())))?;
            set_mtime(&path, ts)?;
            report.created.push(rel(&path));
        }
    }
    Ok(report)
}
