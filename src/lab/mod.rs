//! The lab: a real fleet of relay hosts (sshd in private mount namespaces) on one machine.
