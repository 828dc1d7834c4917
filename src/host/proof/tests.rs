//! The comparison's rules on listings built here, exactly as hosts send them: a
//! header and the digest of the normalised listing, then, as the controller answers,
//! every record or only those the cutover record keeps, with a trailer.

use ring::digest::{digest, SHA256};
use tokio::task::JoinHandle;

use super::{compare, Side};

const VMAIL: &str = "1001:1001";

fn sha(records: &[Vec<u8>]) -> String {
    let body: Vec<u8> = records
        .iter()
        .flat_map(|r| [r.as_slice(), b"\0"].concat())
        .collect();
    data_encoding::HEXLOWER.encode(digest(&SHA256, &body).as_ref())
}

fn trailer(records: &[Vec<u8>]) -> Vec<u8> {
    format!("#cmfleet-end {} {}", records.len(), sha(records)).into_bytes()
}

/// A queue record as the digest reads it: its queue ID (field 5) as `-`.
fn normalised(r: &[u8]) -> Vec<u8> {
    let mut fields: Vec<&[u8]> = r.splitn(6, |b| *b == b'\t').collect();
    if r.first() == Some(&b'Q') && fields.len() == 6 {
        fields[4] = b"-";
    }
    fields.join(&b'\t')
}

/// What one host sends, as the listing script does.
#[derive(Clone)]
struct Host {
    header: Vec<u8>,
    /// The digest line after its role word, `COUNT SHA256`; `None`: the listing
    /// ends after its header.
    digest: Option<String>,
    /// Every record and the trailer (the answer `all`).
    all: Vec<Vec<u8>>,
    /// The queue and uidlist records and their trailer (the answer `kept`).
    kept: Vec<Vec<u8>>,
}

/// A host listing `records`, with its vmail [`VMAIL`] and DKIM owner `dkim`.
fn listing(records: &[&[u8]], dkim: &str) -> Host {
    let mut sorted: Vec<Vec<u8>> = records.iter().map(|r| r.to_vec()).collect();
    sorted.sort_by_key(|r| key(r));
    let norm: Vec<Vec<u8>> = sorted.iter().map(|r| normalised(r)).collect();
    let kept: Vec<Vec<u8>> = sorted
        .iter()
        .filter(|r| matches!(r.first(), Some(b'Q' | b'U')))
        .cloned()
        .collect();
    let mut all = sorted.clone();
    all.push(trailer(&sorted));
    let mut kept_out = kept.clone();
    kept_out.push(trailer(&kept));
    Host {
        header: format!("#cmfleet-manifest 2 vmail={VMAIL} dkim={dkim}").into_bytes(),
        digest: Some(format!("{} {}", norm.len(), sha(&norm))),
        all,
        kept: kept_out,
    }
}

fn key(r: &[u8]) -> (u8, Vec<u8>) {
    let path = r.splitn(6, |b| *b == b'\t').nth(5).unwrap_or(b"").to_vec();
    (r[0], path)
}

/// Plays `host` as `role` (`old`, `new`): sends its header and digest line, waits
/// for the answer, sends what it asks for. Returns the answer (`None`: the
/// controller closed the stdin unanswered, or the listing had no digest line).
fn serve(host: Host, role: &str) -> (Side, JoinHandle<Option<String>>) {
    let (tx, records) = tokio::sync::mpsc::channel(1);
    let (answer, asked) = tokio::sync::oneshot::channel::<Vec<u8>>();
    let digest = host
        .digest
        .map(|d| format!("#cmfleet-digest {role} {d}").into_bytes());
    let task = tokio::spawn(async move {
        if tx.send(host.header).await.is_err() {
            return None;
        }
        if tx.send(digest?).await.is_err() {
            return None;
        }
        let said = asked.await.ok()?;
        let rest = match said.as_slice() {
            b"all\n" => host.all,
            b"kept\n" => host.kept,
            _ => Vec::new(),
        };
        for r in rest {
            if tx.send(r).await.is_err() {
                break;
            }
        }
        Some(String::from_utf8_lossy(&said).trim().to_string())
    });
    (
        Side {
            records,
            answer,
            digested: None,
        },
        task,
    )
}

type Answers = (Option<String>, Option<String>);

/// The proof of `old` against `new`, and what each host was asked to send.
async fn run_keeping(
    old: Host,
    new: Host,
    keep: &mut (dyn super::Keep + Send),
) -> (Result<super::Differences, super::Incomplete>, Answers) {
    let ((old, a), (new, b)) = (serve(old, "old"), serve(new, "new"));
    let d = compare(old, new, keep).await;
    let answers = (a.await.expect("old's host"), b.await.expect("new's host"));
    (d, answers)
}

async fn run_asked(old: Host, new: Host) -> (Result<Vec<String>, super::Incomplete>, Answers) {
    let (d, answers) = run_keeping(old, new, &mut super::Discard).await;
    (d.map(|d| d.into_lines()), answers)
}

async fn run(old: Host, new: Host) -> Result<Vec<String>, super::Incomplete> {
    run_asked(old, new).await.0
}

fn asked(what: &str) -> Answers {
    (Some(what.to_string()), Some(what.to_string()))
}

fn mail(path: &str, size: u32, mtime: &str, owner: &str) -> Vec<u8> {
    format!("M\tf\t{size}\t{mtime}\t{owner}\t{path}").into_bytes()
}

/// The merge's own tolerance, on records no host sends today (OLD's listing reads
/// every owner as `=`, mtimes are whole seconds): their digests differ, and the
/// merge still passes them.
#[tokio::test]
async fn equal_trees_pass_whatever_old_owners_and_subseconds() {
    let old = [
        mail("d/u/cur/1", 3, "100.5", "0:0"),
        b"M\td\t0\t0\t0:0\td/u".to_vec(),
    ];
    let new = [
        mail("d/u/cur/1", 3, "100.9", VMAIL),
        format!("M\td\t0\t0\t{VMAIL}\td/u").into_bytes(),
    ];
    let o: Vec<&[u8]> = old.iter().map(Vec::as_slice).collect();
    let n: Vec<&[u8]> = new.iter().map(Vec::as_slice).collect();
    assert_eq!(run(listing(&o, "-"), listing(&n, "-")).await, Ok(vec![]));
}

#[tokio::test]
async fn a_root_owned_message_on_new_is_a_difference() {
    // OLD's listing reads every owner as `=` (OLD's owners are not compared).
    let old = mail("d/u/cur/1", 3, "100", "=");
    let new = mail("d/u/cur/1", 3, "100", "0:0");
    let d = run(listing(&[&old], "-"), listing(&[&new], "-"))
        .await
        .expect("complete");
    assert_eq!(
        d,
        vec![format!("owner on new: d/u/cur/1 is 0:0, not {VMAIL}")]
    );
}

#[tokio::test]
async fn missing_extra_and_changed_entries_are_named() {
    let old = [mail("a", 3, "1", VMAIL), mail("b", 1, "1", VMAIL)];
    let new = [mail("a", 4, "1", VMAIL), mail("c", 1, "1", VMAIL)];
    let d = run(
        listing(&[&old[0], &old[1]], "-"),
        listing(&[&new[0], &new[1]], "-"),
    )
    .await
    .expect("complete");
    assert_eq!(d.len(), 3, "{d:?}");
    assert!(d[0].starts_with("differs: a (old f 3 B"), "{d:?}");
    assert_eq!(d[1], "missing on new: b");
    assert_eq!(d[2], "only on new: c");
}

/// Tabs, newlines and bytes that are not UTF-8 are names like any other: equal
/// trees pass, and two names that read alike are still told apart.
#[tokio::test]
async fn hostile_names_are_compared_byte_for_byte() {
    let names: [&[u8]; 3] = [b"d/u/cur/a\tb", b"d/u/cur/new\nline", b"d/u/cur/\xff\xfe"];
    let records: Vec<Vec<u8>> = names
        .iter()
        .map(|n| [b"M\tf\t1\t5\t1001:1001\t".as_slice(), n].concat())
        .collect();
    let r: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    assert_eq!(run(listing(&r, "-"), listing(&r, "-")).await, Ok(vec![]));
    let other = b"M\tf\t1\t5\t1001:1001\td/u/cur/\xff\xfd".to_vec();
    let d = run(
        listing(&r, "-"),
        listing(&[r[0], r[1], other.as_slice()], "-"),
    )
    .await
    .expect("complete");
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d.iter()
            .any(|l| l == "only on new: d/u/cur/\u{fffd}\u{fffd}"),
        "{d:?}"
    );
    assert!(
        d.iter().any(|l| l.starts_with("missing on new: d/u/cur/")),
        "{d:?}"
    );
    assert!(
        run(listing(&r, "-"), listing(&r, "-")).await.is_ok(),
        "a newline inside a name is not a record end"
    );
}

#[tokio::test]
async fn state_is_compared_by_content_and_owned_as_the_migration_sets() {
    let key_old = b"D\t-\t-\taaaa\t-\t/etc/dkimkeys/opendkim.private".to_vec();
    let key_new = b"D\t-\t-\tbbbb\t-\t/etc/dkimkeys/opendkim.private".to_vec();
    let entry = |owner: &str| {
        format!("S\tf\t1679\t-\t{owner}\t/etc/dkimkeys/opendkim.private").into_bytes()
    };
    let acme = |owner: &str| format!("S\td\t0\t-\t{owner}\t/var/lib/acme").into_bytes();
    let (old_e, old_a) = (entry("="), acme("="));
    let old = listing(&[&key_old, &old_e, &old_a], "-");
    // The throwaway key step 2 made, still there: its content differs.
    let (new_e, new_a) = (entry("="), acme("="));
    let d = run(old.clone(), listing(&[&key_new, &new_e, &new_a], "120:121"))
        .await
        .expect("complete");
    assert_eq!(
        d,
        vec!["differs: /etc/dkimkeys/opendkim.private (content differs)"]
    );
    // Right content, but left with OLD's owner numbers on NEW.
    let (new_e, new_a) = (entry("110:112"), acme("="));
    let d = run(old.clone(), listing(&[&key_old, &new_e, &new_a], "120:121"))
        .await
        .expect("complete");
    assert_eq!(
        d,
        vec!["owner on new: /etc/dkimkeys/opendkim.private is 110:112, not 120:121"]
    );
    let (new_e, new_a) = (entry("120:121"), acme("5:5"));
    let d = run(old, listing(&[&key_old, &new_e, &new_a], "120:121"))
        .await
        .expect("complete");
    assert_eq!(d, vec!["owner on new: /var/lib/acme is 5:5, not 0:0"]);
}

#[tokio::test]
async fn queue_files_compare_by_content_per_queue() {
    let q = |queue: &str, sum: &str| format!("Q\t-\t-\t-\t-\t{queue}/{sum}").into_bytes();
    let (a, b, c) = (
        q("deferred", "aaaa"),
        q("deferred", "bbbb"),
        q("hold", "aaaa"),
    );
    // The same content twice in one queue: two files, both must arrive.
    let old = listing(&[&a, &b, &a], "-");
    assert_eq!(
        run(old.clone(), listing(&[&a, &a, &b], "-")).await,
        Ok(vec![])
    );
    let d = run(old.clone(), listing(&[&a, &b], "-"))
        .await
        .expect("complete");
    assert_eq!(
        d,
        vec!["missing on new: queue file deferred (content aaaa...)"]
    );
    let d = run(old, listing(&[&a, &b, &c], "-"))
        .await
        .expect("complete");
    assert_eq!(d.len(), 2, "{d:?}");
}

#[tokio::test]
async fn uidlists_compare_in_a_clients_terms_and_the_cutover_is_recorded() {
    let u = |v: &str, n: &str| format!("U\t-\t{v}\t{n}\t-\td/u/dovecot-uidlist").into_bytes();
    let q = b"Q\t-\t-\t-\tABC12\tdeferred/aaaa".to_vec();
    let q_old = b"Q\t-\t-\t-\tXYZ9\tdeferred/aaaa".to_vec();
    let d = run(
        listing(&[&u("100", "7")], "-"),
        listing(&[&u("101", "7")], "-"),
    )
    .await
    .expect("complete");
    assert_eq!(
        d,
        vec!["differs: d/u/dovecot-uidlist (UIDVALIDITY/UIDNEXT old 100/7, new 101/7)"]
    );
    // Equal: OLD's UIDs and NEW's queue IDs (postsuper renamed them) are kept,
    // from the few records sent when the digests match.
    let mut kept = super::Cutover::default();
    let (d, answers) = run_keeping(
        listing(
            &[&u("100", "7"), &q_old, &mail("d/u/cur/1", 3, "100", "=")],
            "-",
        ),
        listing(
            &[&u("100", "7"), &q, &mail("d/u/cur/1", 3, "100", "=")],
            "-",
        ),
        &mut kept,
    )
    .await;
    let d = d.expect("complete");
    assert!(d.is_empty());
    assert_eq!(answers, asked("kept"), "the digests match");
    let uids = &kept.mailboxes["d/u/dovecot-uidlist"];
    assert_eq!(
        (uids.uidvalidity.as_str(), uids.uidnext.as_str()),
        ("100", "7")
    );
    assert_eq!(
        kept.queue,
        vec![super::Queued {
            queue: "deferred".into(),
            id: "ABC12".into()
        }]
    );
}

fn many(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| mail(&format!("m{i:03}"), 1, "1", "="))
        .collect()
}

fn refs(records: &[Vec<u8>]) -> Vec<&[u8]> {
    records.iter().map(Vec::as_slice).collect()
}

#[tokio::test]
async fn a_listing_cut_short_or_altered_is_incomplete_never_a_result() {
    let records = many(50);
    let full = listing(&refs(&records), "-");
    let mut other = records.clone();
    other[7] = mail("m007", 2, "1", "=");
    let differs = listing(&refs(&other), "-");
    // Equal digests, and both sides cut short at the same point: never a pass.
    let mut cut = full.clone();
    cut.kept.clear();
    let e = run(cut.clone(), cut).await.expect_err("no trailer");
    assert!(e.why.contains("without its trailer"), "{e}");
    // Digests differ, so every record is sent: one lost in transit, the trailer intact.
    let mut lost = full.clone();
    lost.all.remove(10);
    let e = run(differs.clone(), lost).await.expect_err("count");
    assert!(e.why.contains("50 records, 49 arrived"), "{e}");
    // One record altered in transit.
    let mut altered = full.clone();
    altered.all[5] = mail("m004x", 1, "1", "=");
    let e = run(differs.clone(), altered).await.expect_err("digest");
    assert!(e.why.contains("digest differs"), "{e}");
    // The full listing cut short on both sides.
    let (mut a, mut b) = (full.clone(), differs.clone());
    a.all.truncate(20);
    b.all.truncate(20);
    let e = run(a, b).await.expect_err("no trailer");
    assert!(e.why.contains("without its trailer"), "{e}");
    // No header: not cmfleet's listing at all.
    let mut headless = full.clone();
    headless.header = b"#something else".to_vec();
    let e = run(headless, full.clone()).await.expect_err("header");
    assert!(e.why.contains("header"), "{e}");
    assert_eq!(run(full.clone(), full).await, Ok(vec![]));
}

/// Two hosts whose listings are equal once normalised (OLD's queue IDs are not
/// NEW's after `postsuper -s`; owners read `=` where the migration set them) pass on
/// their digests: neither sends its records, only the few the cutover record keeps.
#[tokio::test]
async fn equal_listings_pass_on_their_digests_without_sending_their_records() {
    let mut old = many(40);
    let mut new = old.clone();
    old.push(b"Q\t-\t-\t-\tOLD1\tdeferred/aaaa".to_vec());
    new.push(b"Q\t-\t-\t-\tNEW7\tdeferred/aaaa".to_vec());
    for r in [&mut old, &mut new] {
        r.push(b"S\tf\t9\t-\t=\t/etc/dkimkeys/opendkim.private".to_vec());
        r.push(b"D\t-\t-\tabcd\t-\t/etc/dkimkeys/opendkim.private".to_vec());
        r.push(b"U\t-\t17\t3\t-\td/u/dovecot-uidlist".to_vec());
    }
    let mut kept = super::Cutover::default();
    let (d, answers) = run_keeping(
        listing(&refs(&old), "-"),
        listing(&refs(&new), "120:121"),
        &mut kept,
    )
    .await;
    assert_eq!(answers, asked("kept"));
    let d = d.expect("complete");
    assert!(d.is_empty());
    assert_eq!(
        d.by_digest,
        Some(44),
        "every record, vouched by the digests"
    );
    assert_eq!(
        d.entries, 2,
        "only the queue file and the uidlist were merged"
    );
    assert_eq!(kept.queue[0].id, "NEW7");
    assert_eq!(kept.mailboxes["d/u/dovecot-uidlist"].uidnext, "3");
}

/// One record that differs, on either side, or one record fewer: the digests
/// differ, every record is sent, and the merge names the difference.
#[tokio::test]
async fn a_single_difference_on_either_side_is_named_after_the_full_listings() {
    let records = many(30);
    let base = listing(&refs(&records), "-");
    let mut changed = records.clone();
    changed[12] = mail("m012", 1, "2", "=");
    let changed = listing(&refs(&changed), "-");
    let (d, answers) = run_asked(base.clone(), changed.clone()).await;
    assert_eq!(answers, asked("all"));
    assert_eq!(
        d,
        Ok(vec!["differs: m012 (old f 1 B 1, new f 1 B 2)".into()])
    );
    let (d, answers) = run_asked(changed, base.clone()).await;
    assert_eq!(answers, asked("all"));
    assert_eq!(
        d,
        Ok(vec!["differs: m012 (old f 1 B 2, new f 1 B 1)".into()])
    );
    // A count mismatch: one record fewer on NEW.
    let fewer = listing(&refs(&records[1..]), "-");
    assert_eq!(
        run_asked(base.clone(), fewer).await,
        (Ok(vec!["missing on new: m000".into()]), asked("all"))
    );
    // One owner NEW's host did not vouch for (`=`): the merge names it.
    let mut foreign = records.clone();
    foreign[3] = mail("m003", 1, "1", "0:0");
    assert_eq!(
        run(base, listing(&refs(&foreign), "-")).await,
        Ok(vec![format!("owner on new: m003 is 0:0, not {VMAIL}")])
    );
}

/// A digest line missing or not a digest (count and 64 hex digits) is an
/// incomplete listing, even when both sides' lines are equal; no host is then left
/// waiting for an answer.
#[tokio::test]
async fn a_missing_or_malformed_digest_is_incomplete_never_a_pass() {
    let full = listing(&refs(&many(5)), "-");
    let mut bad = full.clone();
    bad.digest = Some("5 ".into());
    let (e, answers) = run_asked(bad.clone(), bad).await;
    let e = e.expect_err("malformed");
    assert!(e.why.contains("digest"), "{e}");
    assert_eq!(answers, (None, None), "both hosts' stdins closed");
    let mut none = full.clone();
    none.digest = None;
    let e = run(full.clone(), none).await.expect_err("no digest");
    assert!(e.why.contains("digest"), "{e}");
}

/// The digests may stand for the records only when each listing normalised what it
/// should: OLD's reads every owner as `=`, NEW's only those the migration set. A
/// listing made for the other host is refused, whatever its digest.
#[tokio::test]
async fn a_listing_made_for_the_other_host_is_refused() {
    let full = listing(&refs(&many(5)), "-");
    let ((old, a), (new, b)) = (serve(full.clone(), "new"), serve(full, "new"));
    let e = compare(old, new, &mut super::Discard)
        .await
        .expect_err("old's listing says new");
    assert!(e.why.contains("made for new"), "{e}");
    assert_eq!((a.await.expect("old"), b.await.expect("new")), (None, None));
}
