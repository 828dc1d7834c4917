//! Removing what OLD does not have from NEW's mailboxes: `perl` over a list of
//! paths, NUL-terminated, relative to /home/vmail/mail (the working directory),
//! sorted bytewise. Used by both prunes ([`prune`](super::prune) after the copy,
//! [`early`](super::early) while it runs).
//!
//! A path is only ever removed inside the mailboxes, whatever NEW's tree became
//! since the list was made: each directory on the way is opened with
//! `O_NOFOLLOW | O_DIRECTORY` and entered by its handle, so a directory that a
//! symlink has replaced (rsync mirrors OLD, where an operator may have moved a
//! mailbox to another disk and linked it) is not followed, and what is under it in
//! the list is not there any more anyway. The last part is unlinked, or, a
//! directory, removed with `rm -rf` from inside its parent (rm does not follow
//! symlinks below). A path already gone is fine (`-f`).
//!
//! Each directory something is removed from gets its access and modification times
//! back once the list is done: rsync set them to OLD's, a removal makes the mtime
//! now, which `--delete` (removing before rsync sets the times) does not, and
//! Dovecot reads a maildir's times to know whether to rescan it. While the copy
//! runs, rsync may set a directory's times between the two: it then gets the times
//! it had before, not OLD's, which Dovecot reads as changed as it does "now" (it
//! compares for equality), and rescans. perl: Debian's perl-base is essential, on
//! every relay; `chdir` to a handle is `fchdir`, `utime` on one `futimens`.

/// The program, run as `perl -e REMOVE < LIST`; it dies with a sentence on an
/// error that is not "already gone".
pub(super) const REMOVE: &str = r#"use strict; use warnings; use Fcntl qw(O_RDONLY O_DIRECTORY O_NOFOLLOW);
$/ = "\0";
sysopen(my $root, ".", O_RDONLY | O_DIRECTORY) or die "cannot open the mailboxes: $!\n";
my (%times, @dirs, $in, $h);
sub enter { my ($d) = @_; chdir($root) or die "cannot enter the mailboxes: $!\n"; my $at = $root;
  for my $c (split m{/}, $d) { sysopen(my $next, $c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW) or return undef; chdir($next) or return undef; $at = $next }
  return $at }
while (defined(my $p = <STDIN>)) {
  chomp $p;
  die "not a path below the mailboxes: $p\n" if $p eq "" || grep { $_ eq "" || $_ eq "." || $_ eq ".." } split m{/}, $p, -1;
  my ($d, $name) = $p =~ m{\A(?:(.*)/)?([^/]+)\z}s;
  $d = "" unless defined $d;
  if (!defined $in || $d ne $in) {
    $in = $d; $h = enter($d);
    if ($h && !exists $times{$d}) { my @s = stat($h) or die "cannot read the times of $d: $!\n"; $times{$d} = [@s[8, 9]]; push @dirs, $d }
  }
  next unless $h;
  lstat($name) or next;
  if (-d _) { system("rm", "-rf", "--", $name) == 0 or die "cannot remove $p\n" }
  else { unlink($name) or $!{ENOENT} or die "cannot remove $p: $!\n" }
}
for my $d (@dirs) { my $at = enter($d) or next; utime(@{$times{$d}}, $at) or die "cannot set the times of $d: $!\n" }"#;

/// Shell: remove the paths listed in the file `list` (in /home/vmail/mail);
/// its status is perl's.
pub(super) fn remove_listed(list: &str) -> String {
    format!("perl -e '{REMOVE}' < {list}")
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// Runs [`super::REMOVE`] in `dir` over `paths`: its status and stderr.
    fn remove(dir: &Path, paths: &[&[u8]]) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new("perl")
            .args(["-e", super::REMOVE])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run perl");
        let mut stdin = child.stdin.take().expect("stdin");
        for p in paths {
            stdin.write_all(p).expect("write");
            stdin.write_all(b"\0").expect("write");
        }
        drop(stdin);
        let out = child.wait_with_output().expect("perl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn file(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"mail\n").expect("write");
    }

    #[test]
    fn listed_paths_go_and_their_directories_keep_their_times() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mail = tmp.path().join("mail");
        let odd = std::ffi::OsStr::from_bytes(b"-rf\n\xff\tx");
        for p in ["a/cur/1:2,S", "a/cur/2:2,", "a/new/3", "gone/cur/4", "top"] {
            file(&mail.join(p));
        }
        file(&mail.join("a/cur").join(odd));
        let cur = mail.join("a/cur");
        let before = std::fs::metadata(&cur).expect("cur").mtime();
        // An mtime in the past, as rsync leaves OLD's.
        let old = filetime_of(&cur, before - 1000);
        let (ok, err) = remove(
            &mail,
            &[
                b"a/cur/-rf\n\xff\tx",
                b"a/cur/2:2,",
                b"already/gone",
                b"gone",
                b"gone/cur/4",
                b"top",
            ],
        );
        assert!(ok, "{err}");
        assert!(
            mail.join("a/cur/1:2,S").exists(),
            "what is not listed stays"
        );
        assert!(mail.join("a/new/3").exists());
        assert!(!cur.join(odd).exists());
        assert!(!mail.join("a/cur/2:2,").exists());
        assert!(!mail.join("gone").exists(), "a directory goes whole");
        assert!(!mail.join("top").exists());
        assert_eq!(
            std::fs::metadata(&cur).expect("cur").mtime(),
            old,
            "the directory's mtime is the one it had"
        );
    }

    /// The list names `box/cur/1`, but `box` is now a symlink to a directory outside
    /// the mailboxes that holds a `cur/1` of its own: it stays.
    #[test]
    fn a_symlink_on_the_way_is_not_followed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mail = tmp.path().join("mail");
        let elsewhere = tmp.path().join("elsewhere");
        file(&elsewhere.join("cur/1"));
        file(&mail.join("kept"));
        std::os::unix::fs::symlink(&elsewhere, mail.join("box")).expect("symlink");
        let (ok, err) = remove(&mail, &[b"box/cur/1", b"box/cur/1/x"]);
        assert!(ok, "{err}");
        assert!(elsewhere.join("cur/1").exists(), "the symlink was followed");
        assert!(mail.join("box").exists(), "the symlink is not listed");
        // A listed symlink itself goes, not what it points to.
        let (ok, err) = remove(&mail, &[b"box"]);
        assert!(ok, "{err}");
        assert!(!mail.join("box").exists() && elsewhere.join("cur/1").exists());
    }

    #[test]
    fn a_path_that_is_not_below_the_mailboxes_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mail = tmp.path().join("mail");
        file(&tmp.path().join("outside"));
        file(&mail.join("a/b"));
        for bad in [
            &b"/etc/passwd"[..],
            b"../outside",
            b"a/../../outside",
            b"a/",
            b"a//b",
            b".",
        ] {
            let (ok, err) = remove(&mail, &[bad]);
            assert!(
                !ok && err.contains("not a path below the mailboxes"),
                "{err}"
            );
        }
        assert!(tmp.path().join("outside").exists() && mail.join("a/b").exists());
    }

    /// Sets `path`'s times to `secs` with `touch`; returns `secs`.
    fn filetime_of(path: &Path, secs: i64) -> i64 {
        let status = Command::new("touch")
            .arg("-d")
            .arg(format!("@{secs}"))
            .arg(path)
            .status()
            .expect("touch");
        assert!(status.success());
        secs
    }
}
