//! The comparison's rules on listings built here, exactly as hosts send them.

use ring::digest::{digest, SHA256};

use super::compare;

const VMAIL: &str = "1001:1001";

/// A listing as the host script sends it: header, sorted records, trailer.
fn listing(records: &[&[u8]], dkim: &str) -> Vec<Vec<u8>> {
    let mut sorted: Vec<Vec<u8>> = records.iter().map(|r| r.to_vec()).collect();
    sorted.sort_by_key(|r| key(r));
    let body: Vec<u8> = sorted
        .iter()
        .flat_map(|r| [r.as_slice(), b"\0"].concat())
        .collect();
    let sum = data_encoding::HEXLOWER.encode(digest(&SHA256, &body).as_ref());
    let mut out = vec![format!("#cmfleet-manifest 1 vmail={VMAIL} dkim={dkim}").into_bytes()];
    out.extend(sorted);
    out.push(format!("#cmfleet-end {} {sum}", records.len()).into_bytes());
    out
}

fn key(r: &[u8]) -> (u8, Vec<u8>) {
    let path = r.splitn(6, |b| *b == b'\t').nth(5).unwrap_or(b"").to_vec();
    (r[0], path)
}

fn feed(records: Vec<Vec<u8>>) -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for r in records {
            if tx.send(r).await.is_err() {
                return;
            }
        }
    });
    rx
}

async fn run(old: Vec<Vec<u8>>, new: Vec<Vec<u8>>) -> Result<Vec<String>, super::Incomplete> {
    compare(feed(old), feed(new), &mut super::Discard)
        .await
        .map(|d| d.into_lines())
}

fn mail(path: &str, size: u32, mtime: &str, owner: &str) -> Vec<u8> {
    format!("M\tf\t{size}\t{mtime}\t{owner}\t{path}").into_bytes()
}

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
    let old = mail("d/u/cur/1", 3, "100", "0:0");
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
    let (old_e, old_a) = (entry("110:112"), acme("0:0"));
    let old = listing(&[&key_old, &old_e, &old_a], "-");
    // The throwaway key step 2 made, still there: its content differs.
    let (new_e, new_a) = (entry("120:121"), acme("0:0"));
    let d = run(old.clone(), listing(&[&key_new, &new_e, &new_a], "120:121"))
        .await
        .expect("complete");
    assert_eq!(
        d,
        vec!["differs: /etc/dkimkeys/opendkim.private (content differs)"]
    );
    // Right content, but left with OLD's owner numbers on NEW.
    let (new_e, new_a) = (entry("110:112"), acme("0:0"));
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
    // Equal: OLD's UIDs and NEW's queue IDs (postsuper renamed them) are kept.
    let mut kept = super::Cutover::default();
    let d = compare(
        feed(listing(&[&u("100", "7"), &q_old], "-")),
        feed(listing(&[&u("100", "7"), &q], "-")),
        &mut kept,
    )
    .await
    .expect("complete");
    assert!(d.is_empty());
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

#[tokio::test]
async fn a_listing_cut_short_or_altered_is_incomplete_never_a_result() {
    let records: Vec<Vec<u8>> = (0..50)
        .map(|i| mail(&format!("m{i:03}"), 1, "1", VMAIL))
        .collect();
    let r: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
    let full = listing(&r, "-");
    // Both sides cut at the same point: the two would match, and must not pass.
    let mut cut = full.clone();
    cut.truncate(20);
    let e = run(cut.clone(), cut).await.expect_err("no trailer");
    assert!(e.why.contains("without its trailer"), "{e}");
    // One record lost in transit, the trailer intact.
    let mut lost = full.clone();
    lost.remove(10);
    let e = run(full.clone(), lost).await.expect_err("count");
    assert!(e.why.contains("50 records, 49 arrived"), "{e}");
    // One record altered in transit.
    let mut altered = full.clone();
    altered[5] = mail("m004x", 1, "1", VMAIL);
    let e = run(full.clone(), altered).await.expect_err("digest");
    assert!(e.why.contains("digest"), "{e}");
    // No header: not cmfleet's listing at all.
    let e = run(full[1..].to_vec(), full.clone())
        .await
        .expect_err("header");
    assert!(e.why.contains("header"), "{e}");
    assert_eq!(run(full.clone(), full).await, Ok(vec![]));
}
