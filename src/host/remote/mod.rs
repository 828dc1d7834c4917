//! Running commands: on relay hosts over multiplexed ssh, and locally (cmdeploy,
//! staged rsync hops). Output streams line by line into the relay's log and into
//! events; failures are classified transient or permanent for the scheduler.

mod channel;
mod classify;
mod process;
mod ssh;
mod workspace;

pub use classify::{
    classify_connect, classify_exit, connect_failure, telling_line, CommandError, CommandKind,
};
pub use process::{run_process, LineSink, ProcessOutput, Stdout, TAR_PROGRESS};
pub use ssh::{master_ssh_command, ConnectOptions, HostConn, SshError, SshPool, SshPoolConfig};
pub use workspace::{Workspace, WorkspaceError, WorkspacePool};
