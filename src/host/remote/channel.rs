//! One remote command as a channel on a host's master connection, opened in-process.
//!
//! OpenSSH's mux protocol lets a client ask the master for a session and hand it the
//! session's stdin/stdout/stderr as file descriptors. Speaking it from here (with
//! `openssh-mux-client`) costs no process: an `ssh -S` client per command cost the
//! controller ~13 ms of CPU each (exec, libcrypto, config), the largest share of its
//! CPU after the handshakes. It also asks for agent forwarding per channel, which
//! the `openssh` crate's own command API never requests.

use std::borrow::Cow;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use openssh_mux_client::{Connection, NonZeroByteSlice, Session, SessionStatus};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe::{Receiver, Sender};

use super::process::{stream_output, LineSink, ProcessOutput, Stdout};

/// What ssh itself exits with when the connection fails; a channel whose master
/// went away without an exit status reports the same, so classification is shared.
pub const CONNECTION_LOST: i32 = 255;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("the command contains a NUL byte")]
    NulByte,
    #[error("cannot create a pipe: {0}")]
    Pipe(std::io::Error),
    #[error("the master connection refused a channel: {0}")]
    Mux(#[from] openssh_mux_client::Error),
    #[error("reading the command's output: {0}")]
    Output(std::io::Error),
}

/// Runs `script` on the master behind `control`, streaming its output into `sink`.
///
/// Dropping the future closes the mux connection, and the master then closes the
/// channel: the same as killing an `ssh -S` client.
pub async fn run_channel(
    control: &Path,
    script: &str,
    forward_agent: bool,
    sink: &LineSink,
    to: Stdout,
) -> Result<ProcessOutput, ChannelError> {
    let cmd = NonZeroByteSlice::new(script.as_bytes()).ok_or(ChannelError::NulByte)?;
    let session = Session::builder()
        .cmd(Cow::Borrowed(cmd))
        .agent(forward_agent)
        .build();
    // stdin is a pipe held open while the command runs, written to only to answer a
    // command's question (`Stdout::Dialogue`): when this future is dropped (a second
    // Ctrl-C), its end reaches the remote command as EOF on stdin, which
    // `commands::stops_with_channel` turns into a kill.
    let (in_r, in_w) = std::io::pipe().map_err(ChannelError::Pipe)?;
    let (out_r, out_w) = std::io::pipe().map_err(ChannelError::Pipe)?;
    let (err_r, err_w) = std::io::pipe().map_err(ChannelError::Pipe)?;
    // The master gets copies of these (blocking, as the protocol needs); ours must
    // close right after, or the readers would never see the end of the output.
    let fds = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
    let established = Connection::connect(control)
        .await?
        .open_new_session(&session, &fds)
        .await?;
    drop((in_r, out_w, err_w));
    let reader = |r: std::io::PipeReader| Receiver::from_owned_fd(OwnedFd::from(r));
    let stdout = reader(out_r).map_err(ChannelError::Pipe)?;
    let stderr = reader(err_r).map_err(ChannelError::Pipe)?;
    // The output first, to its end, and only then the exit status: `wait()` closes
    // our mux connection when it returns, and the master then throws away whatever
    // output it has not yet written into our pipes. sshd reports the exit status as
    // soon as the command ends, while output beyond the channel window (2 MiB) is
    // still on its way, so a consumer slower than the command lost the tail of it
    // (openssh-rust/openssh#103). The master closes our pipes at the end of the
    // output, or when the connection is lost: this read always ends.
    let (to, answer) = match to {
        Stdout::Dialogue { to, end, answer } => (Stdout::Records { to, end }, Some(answer)),
        other => (other, None),
    };
    let output = stream_output(Some(stdout), Some(stderr), sink, to);
    let (output, _in_w) = match answer {
        None => (output.await, Some(in_w)),
        Some(answer) => (answered(output, answer, in_w).await?, None),
    };
    let status = established.wait().await;
    let (captured, tail) = output.map_err(ChannelError::Output)?;
    let code = match status {
        Ok(SessionStatus::Exited {
            exit_value: Some(v),
        }) => i32::try_from(v).unwrap_or(CONNECTION_LOST),
        // No exit status: the master or the connection went away mid-command.
        Ok(_) | Err(_) => CONNECTION_LOST,
    };
    Ok(ProcessOutput {
        code: Some(code),
        signal: None,
        tail,
        stdout: captured,
    })
}

/// Runs `output` (the command's) to its end, writing what `answer` yields into the
/// command's stdin (`stdin`: our end of its pipe), which is held open until then.
/// An answer dropped unsent closes the stdin at once: a command waiting for one
/// reads EOF and ends, rather than waiting on a controller that gave up on it.
async fn answered<T>(
    output: impl std::future::Future<Output = T>,
    answer: tokio::sync::oneshot::Receiver<Vec<u8>>,
    stdin: std::io::PipeWriter,
) -> Result<T, ChannelError> {
    let mut stdin = Some(Sender::from_owned_fd(OwnedFd::from(stdin)).map_err(ChannelError::Pipe)?);
    // Boxed: the output's future is large, and pinned here beside the select a
    // debug build's worker stack overflowed in step 4 (the copy runs beside it).
    let mut output = Box::pin(output);
    tokio::select! {
        out = &mut output => return Ok(out),
        reply = answer => match (reply, stdin.as_mut()) {
            (Ok(bytes), Some(w)) => {
                // A write that fails finds the command's stdin gone: the command
                // ended or its channel closed, and its output and exit status say so.
                if w.write_all(&bytes).await.is_err() {
                    stdin = None;
                }
            }
            _ => stdin = None,
        },
    }
    let out = output.await;
    drop(stdin);
    Ok(out)
}
