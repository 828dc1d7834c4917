//! Streamed command output over the lab's real sshd: read to its end whatever the
//! consumer's pace.
//!
//! OpenSSH's master drops a session's unwritten output when the mux client closes
//! its control connection, and a mux client sees the command's exit status before
//! the master has written everything to the client's pipes. A consumer slower than
//! the command (step 4's proof merges two hosts' listings, so one side always waits
//! on the other) used to lose the tail of the output.

mod common;

use std::time::Duration;

use cmfleet::host::remote::{CommandKind, ConnectOptions, Stdout};
use cmfleet::model::inventory::Inventory;
use common::lab::{quiet_sink, ssh_pool, TestLab};

/// 1,000,000 records (6.9 MB, more than the ssh channel window of 2 MB) into a channel of one, with the consumer away for a
/// second before it starts: the command has long exited when the reading begins,
/// and every record still arrives, in order.
#[test]
fn a_slow_consumer_gets_every_record() {
    let lab = TestLab::start(1);
    let inv = Inventory::load(&lab.inventory()).expect("lab inventory");
    let relay = &inv.relays[0];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ssh = ssh_pool(&inv);
        let conn = ssh
            .connect(&relay.old, ConnectOptions::for_relay(relay), || {})
            .await
            .expect("connect");
        const N: usize = 1_000_000;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
        let consumer = async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (mut count, mut last) = (0usize, Vec::new());
            while let Some(record) = rx.recv().await {
                count += 1;
                assert_eq!(record, count.to_string().into_bytes(), "record {count}");
                if count % 250_000 == 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                last = record;
            }
            (count, last)
        };
        let script = format!("seq 1 {N} | tr '\\n' '\\0'");
        let sink = quiet_sink(&relay.name);
        let to = Stdout::Records { to: tx, end: 0 };
        let (ran, (count, last)) = tokio::join!(
            ssh.run(&conn, &script, false, CommandKind::Plain, &sink, to),
            consumer
        );
        ran.expect("the command succeeds");
        assert_eq!(count, N, "records received");
        assert_eq!(last, N.to_string().into_bytes());
        ssh.close().await;
    });
}

/// A command that asks: what it prints before it reads its stdin reaches the
/// consumer first, the answer reaches the command (step 4's proof answers each
/// host's digest with what to send), and a question left unanswered ends the
/// command instead of leaving it waiting on the host.
#[test]
fn a_command_gets_its_answer_or_the_end_of_its_stdin() {
    let lab = TestLab::start(1);
    let inv = Inventory::load(&lab.inventory()).expect("lab inventory");
    let relay = &inv.relays[0];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ssh = ssh_pool(&inv);
        let conn = ssh
            .connect(&relay.old, ConnectOptions::for_relay(relay), || {})
            .await
            .expect("connect");
        let sink = quiet_sink(&relay.name);
        let script =
            r#"printf 'which?\0'; IFS= read -r a || { printf 'no answer\0'; exit 0; }; printf 'got %s\0' "$a""#;
        for answer in [Some(b"kept\n".to_vec()), None] {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
            let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
            let to = Stdout::Dialogue {
                to: tx,
                end: 0,
                answer: answer_rx,
            };
            let expected = answer.clone();
            let consumer = async move {
                let question = rx.recv().await;
                assert_eq!(question.as_deref(), Some(&b"which?"[..]));
                match expected {
                    Some(a) => answer_tx.send(a).expect("the command still asks"),
                    None => drop(answer_tx),
                }
                rx.recv().await
            };
            let (ran, reply) = tokio::time::timeout(Duration::from_secs(20), async {
                tokio::join!(
                    ssh.run(&conn, script, false, CommandKind::Plain, &sink, to),
                    consumer
                )
            })
            .await
            .expect("the command does not wait forever");
            ran.expect("the command succeeds");
            let want: &[u8] = match answer {
                Some(_) => b"got kept",
                None => b"no answer",
            };
            assert_eq!(reply.as_deref(), Some(want));
        }
        ssh.close().await;
    });
}
