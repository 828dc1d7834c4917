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
//! Each directory something is removed from then gets OLD's mtime (its access time
//! stays): rsync sets NEW's directories to OLD's times, a removal makes the mtime
//! now, which `--delete` (removing before rsync sets the times) does not, and
//! Dovecot reads a maildir's times to know whether to rescan it. OLD's times, not
//! the ones found before the removal: while the copy runs, rsync may set a
//! directory between the two, and the older time put back would stay. With OLD's,
//! whichever of rsync and the removal comes last leaves OLD's time (to the second:
//! perl-base's `utime` sets whole seconds; rsync keeps nanoseconds when it is last).
//! perl: Debian's perl-base is essential, on every relay; `chdir` to a handle is
//! `fchdir`, `utime` on one `futimens`.

/// The program, run as `perl -e REMOVE DIR_TIMES < LIST`; it dies with a sentence on
/// an error that is not "already gone". `DIR_TIMES`: OLD's directories' mtimes
/// (`MTIME\tPATH\0`, [`DIR_TIMES`](super::prune::DIR_TIMES)).
pub(super) const REMOVE: &str = r#"use strict; use warnings; use Fcntl qw(O_RDONLY O_DIRECTORY O_NOFOLLOW);
$/ = "\0";
my $times = shift @ARGV;
open(my $t, "<", $times) or die "cannot read the directory times of the old host in $times: $!\n";
sysopen(my $root, ".", O_RDONLY | O_DIRECTORY) or die "cannot open the mailboxes: $!\n";
my (%dirs, $in, $h);
sub enter { my ($d) = @_; chdir($root) or die "cannot enter the mailboxes: $!\n"; my $at = $root;
  for my $c (split m{/}, $d) { sysopen(my $next, $c, O_RDONLY | O_DIRECTORY | O_NOFOLLOW) or return undef; chdir($next) or return undef; $at = $next }
  return $at }
while (defined(my $p = <STDIN>)) {
  chomp $p;
  die "not a path below the mailboxes: $p\n" if $p eq "" || grep { $_ eq "" || $_ eq "." || $_ eq ".." } split m{/}, $p, -1;
  my ($d, $name) = $p =~ m{\A(?:(.*)/)?([^/]+)\z}s;
  $d = "" unless defined $d;
  if (!defined $in || $d ne $in) { $in = $d; $h = enter($d); $dirs{$d} = 1 if $h }
  next unless $h;
  lstat($name) or next;
  if (-d _) { system("rm", "-rf", "--", $name) == 0 or die "cannot remove $p\n" }
  else { unlink($name) or $!{ENOENT} or die "cannot remove $p: $!\n" }
}
while (defined(my $r = <$t>)) {
  chomp $r; my ($m, $d) = split /\t/, $r, 2;
  next unless defined $d && delete $dirs{$d};
  my $at = enter($d) or next; my @s = stat($at) or next;
  utime($s[8], $m, $at) or die "cannot set the times of $d: $!\n";
}
close($t) or die "cannot read the directory times of the old host in $times: $!\n";"#;

/// Shell: remove the paths listed in the file `list` (in /home/vmail/mail), giving
/// the directories removed from OLD's times from the file `dir_times`; its status
/// is perl's.
pub(super) fn remove_listed(list: &str, dir_times: &str) -> String {
    format!("perl -e '{REMOVE}' {dir_times} < {list}")
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// Runs [`super::REMOVE`] in `dir` over `paths`, with OLD's directory `times`
    /// (`(mtime, path)`): its status and stderr.
    fn remove(dir: &Path, paths: &[&[u8]], times: &[(i64, &str)]) -> (bool, String) {
        use std::io::Write;
        let file = dir.parent().expect("parent").join("dir-times");
        let body: Vec<u8> = times
            .iter()
            .flat_map(|(m, p)| format!("{m}\t{p}\0").into_bytes())
            .collect();
        std::fs::write(&file, body).expect("write times");
        let mut child = Command::new("perl")
            .args(["-e", super::REMOVE])
            .arg(&file)
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

    /// The program goes to the shell between single quotes.
    #[test]
    fn the_program_has_no_single_quote() {
        assert!(!super::REMOVE.contains('\''));
    }

    fn file(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, b"mail\n").expect("write");
    }

    #[test]
    fn listed_paths_go_and_their_directories_get_old_s_times() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mail = tmp.path().join("mail");
        let odd = std::ffi::OsStr::from_bytes(b"-rf\n\xff\tx");
        for p in ["a/cur/1:2,S", "a/cur/2:2,", "a/new/3", "gone/cur/4", "top"] {
            file(&mail.join(p));
        }
        file(&mail.join("a/cur").join(odd));
        let (cur, new) = (mail.join("a/cur"), mail.join("a/new"));
        let new_before = std::fs::metadata(&new).expect("new").mtime();
        // OLD's times, in the past as rsync would have set them; `a/new` is OLD's
        // too, but nothing is removed from it.
        let (old_cur, old_top) = (1_700_000_000, 1_700_000_100);
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
            &[(old_cur, "a/cur"), (1_600_000_000, "a/new"), (old_top, "")],
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
        let mtime = |p: &Path| std::fs::metadata(p).expect("stat").mtime();
        assert_eq!(
            mtime(&cur),
            old_cur,
            "a directory removed from has OLD's mtime"
        );
        assert_eq!(mtime(&mail), old_top, "the mailboxes' own directory too");
        assert_eq!(
            mtime(&new),
            new_before,
            "one nothing was removed from is left alone"
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
        let (ok, err) = remove(&mail, &[b"box/cur/1", b"box/cur/1/x"], &[]);
        assert!(ok, "{err}");
        assert!(elsewhere.join("cur/1").exists(), "the symlink was followed");
        assert!(mail.join("box").exists(), "the symlink is not listed");
        // A listed symlink itself goes, not what it points to.
        let (ok, err) = remove(&mail, &[b"box"], &[]);
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
            let (ok, err) = remove(&mail, &[bad], &[]);
            assert!(
                !ok && err.contains("not a path below the mailboxes"),
                "{err}"
            );
        }
        assert!(tmp.path().join("outside").exists() && mail.join("a/b").exists());
    }
}
