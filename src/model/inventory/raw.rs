//! The inventory file's shape exactly as written, before inheritance and validation.
//!
//! Every value that needs checking beyond its TOML type is kept `Spanned` so the
//! error can point at the exact line and column.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string with its position in the file.
pub type Text = Spanned<String>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    pub fleet: RawFleet,
    #[serde(default)]
    pub defaults: RawSettings,
    #[serde(default)]
    pub groups: BTreeMap<String, RawGroup>,
    #[serde(default)]
    pub relay: Vec<RawRelay>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub cmdeploy: Text,
    pub state_dir: Option<Text>,
    pub ssh_auth_sock: Option<Text>,
    pub cmdeploy_home: Option<Text>,
    pub cmdeploy_env: Option<BTreeMap<String, Text>>,
    pub forks: Option<Spanned<u32>>,
    pub transfers: Option<Spanned<u32>>,
    pub cmdeploy_runs: Option<Spanned<u32>>,
    pub cutovers: Option<Spanned<u32>>,
    pub ssh_connects_per_sec: Option<Spanned<u32>>,
    pub dns_updates_per_sec: Option<Spanned<u32>>,
    pub staging_budget: Option<Text>,
    pub max_fail_percent: Option<Spanned<u32>>,
    pub waves: Option<Vec<Spanned<RawWave>>>,
}

/// A wave is either a relay count or a percentage such as `"25%"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawWave {
    Count(i64),
    Percent(String),
}

/// Declares a struct holding every inheritable setting plus the given extra fields.
/// Written once so `[defaults]`, `[groups.X]` and `[[relay]]` cannot drift apart;
/// `#[serde(flatten)]` would have been shorter but breaks `deny_unknown_fields` and
/// loses error positions.
macro_rules! with_settings {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            pub transfer: Option<Text>,
            pub ssh_user: Option<Text>,
            pub ssh_port: Option<Spanned<u16>>,
            pub ssh_key: Option<Text>,
            pub connect_timeout: Option<Text>,
            pub refresh_after: Option<Text>,
            pub host_key_policy: Option<Text>,
            pub cipher: Option<Text>,
            pub kex: Option<Text>,
            pub disable_old: Option<Text>,
            pub skip_dns_check: Option<Spanned<bool>>,
            pub dns: Option<RawDns>,
            pub retry: Option<RawRetry>,
            pub hooks: Option<RawHooks>,
        }
    };
}

with_settings!(
    /// `[defaults]`: inherited by every relay.
    #[derive(Default)]
    RawSettings {}
);

with_settings!(
    /// `[groups.NAME]`: inherited by the group's relays, plus per-group limits.
    #[derive(Default)]
    RawGroup {
        max_transfers: Option<Spanned<u32>>,
        ssh_connects_per_sec: Option<Spanned<u32>>,
    }
);

with_settings!(
    /// One `[[relay]]`: its identity and hosts, plus per-relay overrides.
    RawRelay {
        mail_domain: Text,
        config: Text,
        group: Option<Text>,
        old: RawHost,
        new: RawHost,
    }
);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub ssh: Text,
    pub ip4: Text,
    pub ip6: Option<Text>,
    pub user: Option<Text>,
    pub port: Option<Spanned<u16>>,
    pub key: Option<Text>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDns {
    pub provider: Option<Text>,
    pub server: Option<Text>,
    pub zone: Option<Text>,
    pub tsig_key_file: Option<Text>,
    pub command: Option<Text>,
    pub ttl: Option<Spanned<u32>>,
    pub propagation_timeout: Option<Text>,
    pub nameservers: Option<BTreeMap<String, Text>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub attempts: Option<Spanned<u32>>,
    pub backoff: Option<Text>,
    pub max_backoff: Option<Text>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub pre_cutover: Option<Text>,
    pub post_cutover: Option<Text>,
}
